"""Wall time of a 1,000-task flow on a real Dask cluster, stock vs patched.

The flow is the seed flow's shape at scale: 500 chains ``inc(inc(i))``, only
the children's futures kept, all waited for.  Flows alternate stock /
patched (order swapped every pair) on one LocalCluster (2 workers x 2 threads).
"""

from __future__ import annotations

import statistics
import time

import services


def chains(n: int):
    from prefect.futures import wait

    from workload import inc

    def body():
        children = [inc.submit(inc.submit(i)) for i in range(n // 2)]
        wait(children)
        return sum(f.result() for f in children)

    return body


def rows(pairs: int, tasks: int):
    import prefect_future_anchor
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    times = {"stock": [], "patched": []}
    expected = sum(i + 2 for i in range(tasks // 2))
    with services.dask_cluster(n_workers=2, threads_per_worker=2) as address:
        flow(chains(min(tasks, 50)), name="bench-warm-up", task_runner=DaskTaskRunner(address=address))()
        body = chains(tasks)
        for pair in range(pairs):
            order = ("stock", "patched") if pair % 2 == 0 else ("patched", "stock")
            for side in order:
                (prefect_future_anchor.install if side == "patched" else prefect_future_anchor.uninstall)()
                start = time.perf_counter()
                result = flow(body, name=f"bench-{tasks}-tasks", task_runner=DaskTaskRunner(address=address))()
                times[side].append(time.perf_counter() - start)
                assert result == expected, result
        prefect_future_anchor.uninstall()
    stock, patched = statistics.median(times["stock"]), statistics.median(times["patched"])
    ratio = patched / stock
    return [
        (
            f"{tasks}-task flow on Dask, wall (median of {pairs})",
            f"{stock:.1f} s",
            f"{patched:.1f} s",
            f"{ratio:.3f}",
            "≤ 1.02",
            ratio <= 1.02,
        )
    ]


if __name__ == "__main__":
    with services.prefect_server():
        for row in rows(pairs=1, tasks=100):
            print(row)
