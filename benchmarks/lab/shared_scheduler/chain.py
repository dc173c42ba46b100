"""Which structure of a long-lived Dask scheduler keeps a finished Prefect run's payload (issue 36).

    .nox/matrix-3-9-1/bin/python benchmarks/lab/shared_scheduler/chain.py --runs 40

One ``dask scheduler`` and one ``dask worker`` (subprocesses, stopped by handle), one flow of
``--runs`` seed-pattern runs, then in the scheduler: every referrer path from a retained Prefect
``Task`` upwards, each step with its type, length and (for containers) what else it holds.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import services  # noqa: E402


def walk(dask_scheduler=None, steps=60):
    import gc
    import types

    gc.collect()
    sample = next((o for o in gc.get_objects() if type(o).__module__ == "prefect.tasks" and type(o).__name__ == "Task"), None)
    if sample is None:
        return {"task": None}
    out = []
    current, seen = sample, {id(sample)}
    mine = []
    refs = []
    for _ in range(steps):
        previous = refs  # the last step's own list refers to ``current``: not a holder
        refs = [r for r in gc.get_referrers(current) if id(r) not in seen and r is not previous and r is not mine
                and not isinstance(r, types.FrameType) and r is not out]
        if not refs:
            out.append("<no referrer>")
            break
        current = refs[0]
        seen.add(id(current))
        d = type(current).__module__ + "." + type(current).__qualname__
        if isinstance(current, dict):
            d += " keys=" + repr(list(current)[:6])[:200]
        elif isinstance(current, (list, tuple, set, frozenset)):
            d += f" len={len(current)} types=" + repr([type(x).__module__ + "." + type(x).__name__ for x in list(current)[:5]])
        elif hasattr(current, "__dict__"):
            d += " attrs=" + repr(list(vars(current))[:8])[:200]
        d += f" (n_referrers={len(refs)})"
        out.append(d)
    return {"task": repr(sample)[:80], "chain": out}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    from scheduler_memory import Scheduler  # benchmarks/: a scheduler and a worker, stopped by handle

    cluster = Scheduler(Path(tempfile.mkdtemp(prefix="pfa-chain-")), "chain")
    try:
        with services.prefect_server():
            from distributed import Client
            from prefect import flow
            from prefect_dask import DaskTaskRunner
            from prefect_future_anchor.demo import seed_tasks

            task1, task2 = seed_tasks()[:2]

            @flow(task_runner=DaskTaskRunner(address=cluster.address))
            def seed(pairs: int):
                kept = [task2.submit(task1.submit()) for _ in range(pairs)]
                return sum(f.result() for f in kept)

            with Client(cluster.address) as client:
                client.wait_for_workers(1, timeout=300)
                seed(args.runs // 2)
                deadline = time.monotonic() + 60
                while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
                    time.sleep(0.2)  # a bounded poll for the scheduler to forget the flow's keys
                r = client.run_on_scheduler(walk)
                print(r["task"])
                for i, line in enumerate(r.get("chain", [])):
                    print(i, line)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
