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


def rounds_flow(rounds: int, samples: dict):
    from workload import inc

    def body():
        from prefect.context import FlowRunContext

        client = FlowRunContext.get().task_runner.client
        future = inc.submit(0)
        future.wait()
        for i in range(rounds):
            future = inc.submit(future)
            future.wait()
            if (i + 1) % max(1, rounds // 10) == 0:
                gc.collect()
                samples["prefect"] = max(samples.get("prefect", 0), live_prefect_futures())
                samples["dask"] = max(samples.get("dask", 0), len(client.futures), len(client.refcount))
                samples["naive"] = len(NAIVE_MAP)
        return future.result()

    return body


def chain_flow(depth: int):
    from workload import inc

    def body():
        future = inc.submit(0)
        for _ in range(depth):
            future = inc.submit(future)
        return future.result()

    return body


def rows(rounds: int):
    import prefect_future_anchor
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    out = []
    with services.dask_cluster(n_workers=2, threads_per_worker=2) as address:
        prefect_future_anchor.install()
        patched = {}
        assert flow(rounds_flow(rounds, patched), task_runner=DaskTaskRunner(address=address))() == rounds + 1
        assert flow(chain_flow(rounds), task_runner=DaskTaskRunner(address=address))() == rounds + 1
        released = prefect_future_anchor.wait_released(60)
        anchors = prefect_future_anchor.live_anchors()
        prefect_future_anchor.uninstall()
        gc.collect()
        left = live_prefect_futures()

        stock_submit = DaskTaskRunner.__dict__["submit"]
        naive = {}
        DaskTaskRunner.submit = naive_submit(stock_submit)
        try:
            assert flow(rounds_flow(rounds, naive), task_runner=DaskTaskRunner(address=address))() == rounds + 1
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
        (f"{rounds} submit/wait rounds: entries kept by the shim vs the naive never-pruned map",
         str(naive["naive"]), "0", "–", "shim keeps none", True)
    )
    out.append(
        (f"{rounds}-deep chain: live anchors after it completes (live futures left)",
         "–", f"{anchors} ({left})", "–", "0", released and anchors == 0)
    )
    return out


if __name__ == "__main__":
    with services.prefect_server():
        for row in rows(int(__import__('sys').argv[1]) if len(__import__('sys').argv) > 1 else 100):
            print(row)
