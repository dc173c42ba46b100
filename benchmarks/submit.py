"""Per-submit time of ``DaskTaskRunner.submit``, stock vs patched (default options).

A scheduler with no workers takes the submits, so nothing runs and competes for
the 2 cores: the figure is the client-side cost of one submit (Prefect's
parameter walks, pickling, the message to the scheduler, and with the shim the
capture, the anchor, the drain record and the completion callback).  Batches
alternate stock / patched (``uninstall()`` / ``install()`` in between) in one
process; each batch is then cancelled, which fires the completion callbacks.
Reported: the median per-submit time over the batches of each side.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Dict, List

import services

CASES = {
    "submit, scalar parameters": lambda: {"x": 1},
    "submit, 20,000-element list parameter": lambda: {"items": list(range(20_000))},
}


def _batch(runner, task, parameters, size: int) -> float:
    gc.collect()
    futures = []
    start = time.perf_counter()
    for _ in range(size):
        futures.append(runner.submit(task, parameters))
    elapsed = time.perf_counter() - start
    runner.client.cancel([f.wrapped_future for f in futures])
    del futures
    return elapsed / size


def measure(rounds: int, batch: int) -> Dict[str, Dict[str, List[float]]]:
    import prefect_future_anchor
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from workload import inc, size

    results: Dict[str, Dict[str, List[float]]] = {}
    sizes: Dict[str, int] = {}
    with services.dask_cluster(n_workers=0) as address:

        def body():
            with DaskTaskRunner(address=address) as runner:
                for case, make in CASES.items():
                    task = inc if "scalar" in case else size
                    parameters = make()
                    # a 20,000-element submit costs ~10x a scalar one: smaller batches
                    size_ = batch if "scalar" in case else max(5, batch // 5)
                    sizes[case] = size_
                    samples = results.setdefault(case, {"stock": [], "patched": []})
                    for side in ("stock", "patched"):  # warm-up
                        (prefect_future_anchor.install if side == "patched" else prefect_future_anchor.uninstall)()
                        _batch(runner, task, parameters, size_)
                    for round_ in range(rounds):
                        order = ("stock", "patched") if round_ % 2 == 0 else ("patched", "stock")
                        for side in order:
                            if side == "patched":
                                prefect_future_anchor.install()
                            else:
                                prefect_future_anchor.uninstall()
                            samples[side].append(_batch(runner, task, parameters, size_))
                    prefect_future_anchor.uninstall()
                    prefect_future_anchor.wait_released(60)

        flow(body, name="bench-submit")()
    return {case: dict(samples, size=sizes[case]) for case, samples in results.items()}


def rows(rounds: int, batch: int):
    """Table rows: (name, stock, patched, ratio, goal, met)."""
    out = []
    for case, samples in measure(rounds, batch).items():
        stock = statistics.median(samples["stock"]) * 1e6
        patched = statistics.median(samples["patched"]) * 1e6
        goal = 1.02 if "scalar" in case else 1.05
        ratio = patched / stock
        out.append(
            (
                f"{case} (median of {rounds} batches of {samples['size']})",
                f"{stock:.0f} µs",
                f"{patched:.0f} µs",
                f"{ratio:.3f}",
                f"≤ {goal}",
                ratio <= goal,
            )
        )
    return out


if __name__ == "__main__":
    with services.prefect_server():
        for row in rows(rounds=10, batch=100):
            print(row)
