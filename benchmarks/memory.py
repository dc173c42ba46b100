"""Memory: what the shim keeps stays bounded; the naive fix's map does not.

- ``rounds`` submit/wait rounds, each child depending on the previous round's
  future (``f = inc.submit(f); f.wait()``): the live ``PrefectDaskFuture``
  objects and the Dask client's ``futures`` / ``refcount`` entries, at most,
  sampled every 10% of the rounds;
- a chain of ``rounds`` runs submitted at once: live anchors once it completes;
- the contrast: the seed article's naive fix, a global dict raw future ->
  wrapper filled at every submit and never pruned, on the stock runner.
"""

from __future__ import annotations

import gc

import services

NAIVE_MAP: dict = {}


def live_prefect_futures() -> int:
    from prefect_dask.task_runners import PrefectDaskFuture

    return sum(1 for o in gc.get_objects() if type(o) is PrefectDaskFuture)


def naive_submit(wrapped):
    """The naive fix: remember every upstream wrapper by its raw future, forever."""
    from prefect_dask.task_runners import PrefectDaskFuture

    def submit(self, task, parameters, wait_for=None, dependencies=None):
        for value in list(parameters.values()) + list(wait_for or ()):
            if isinstance(value, PrefectDaskFuture):
                NAIVE_MAP[value.wrapped_future.key] = value
        return wrapped(self, task, parameters, wait_for, dependencies)

    return submit


SAMPLES: dict = {}


# The flow bodies are module-level functions: each submit ships the flow in the
# run context, and a closure would be pickled by value together with the globals
# it reads (NAIVE_MAP included).  The in-process LocalCluster scheduler keeps the
# last messages per worker, so every such copy of the map would stay alive and
# the live-future count would grow quadratically for a reason that is not the
# map's.  Functions of an importable module travel by reference.


def rounds_body(rounds: int) -> int:
    import prefect_future_anchor
    from prefect.context import FlowRunContext

    from workload import inc

    client = FlowRunContext.get().task_runner.client
    future = inc.submit(0)
    future.wait()
    for i in range(rounds):
        future = inc.submit(future)
        future.wait()
        if (i + 1) % max(1, rounds // 10) == 0:
            gc.collect()
            SAMPLES["prefect"] = max(SAMPLES.get("prefect", 0), live_prefect_futures())
            SAMPLES["dask"] = max(SAMPLES.get("dask", 0), len(client.futures), len(client.refcount))
            SAMPLES["naive"] = len(NAIVE_MAP)
            SAMPLES["held"] = max(SAMPLES.get("held", 0), prefect_future_anchor.live_anchors())
    return future.result()


def chain_body(depth: int) -> int:
    from workload import inc

    future = inc.submit(0)
    for _ in range(depth):
        future = inc.submit(future)
    return future.result()


def run_rounds(rounds: int, address: str) -> dict:
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    SAMPLES.clear()
    assert flow(rounds_body, task_runner=DaskTaskRunner(address=address))(rounds) == rounds + 1
    return dict(SAMPLES)


def rows(rounds: int):
    import prefect_future_anchor
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    out = []
    with services.dask_cluster(n_workers=2, threads_per_worker=2) as address:
        prefect_future_anchor.install()
        patched = run_rounds(rounds, address)
        assert flow(chain_body, task_runner=DaskTaskRunner(address=address))(rounds) == rounds + 1
        released = prefect_future_anchor.wait_released(60)
        anchors = prefect_future_anchor.live_anchors()
        prefect_future_anchor.uninstall()
        gc.collect()
        left = live_prefect_futures()

        stock_submit = DaskTaskRunner.__dict__["submit"]
        DaskTaskRunner.submit = naive_submit(stock_submit)
        try:
            naive = run_rounds(rounds, address)
        finally:
            DaskTaskRunner.submit = stock_submit
        NAIVE_MAP.clear()


    out.append(
        (f"{rounds} submit/wait rounds: live PrefectDaskFuture (max) [stock: naive map]",
         f"{naive['prefect']} (naive map)", str(patched["prefect"]), "–", "≤ 10", patched["prefect"] <= 10)
    )
    out.append(
        (f"{rounds} submit/wait rounds: Dask client futures/refcount entries (max)",
         f"{naive['dask']} (naive map)", str(patched["dask"]), "–", "≤ 10", patched["dask"] <= 10)
    )
    out.append(
        (f"{rounds} submit/wait rounds: entries held (max): naive map vs the shim's anchors + tracked runs",
         str(naive["naive"]), str(patched["held"]), "–", "≤ 10", patched["held"] <= 10)
    )
    out.append(
        (f"{rounds}-deep chain: live anchors after it completes (live futures left)",
         "–", f"{anchors} ({left})", "–", "0", released and anchors == 0)
    )
    return out


if __name__ == "__main__":
    import sys

    import memory  # as an importable module, so its flow bodies travel by reference

    with services.prefect_server():
        for row in memory.rows(int(sys.argv[1]) if len(sys.argv) > 1 else 100):
            print(row)
