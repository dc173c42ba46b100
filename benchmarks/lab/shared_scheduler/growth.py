"""Where a shared scheduler's memory goes after the first flow, with every patch (issue 36).

    .nox/matrix-3-9-1/bin/python benchmarks/lab/shared_scheduler/growth.py --flows 4 --runs 2000 [--stock] [--referrers]

Starts a ``dask scheduler`` under ``tracemalloc`` (``PYTHONTRACEMALLOC``) and one
``dask worker`` of 4 threads, both stopped by handle, runs ``--flows`` flows of
``--runs`` seed-pattern runs with ``install()`` (``--stock``: without), and after
each flow, once the scheduler holds no task and has collected, prints one JSON
line: the scheduler's RSS, the bytes Python has allocated there
(``tracemalloc``) and the sizes of distributed's bounded logs; at the end, the
allocation sites whose live bytes grew most from each flow to the next (and
with ``--referrers`` which containers hold what those sites allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: services

import services  # noqa: E402  (the Prefect server's address before prefect is imported)


def inspect(dask_scheduler=None, dump=None):
    """Runs in the scheduler process: RSS, traced bytes and logs; the snapshot
    is written to ``dump`` and compared in the driver (a comparison here would
    hold the scheduler's event loop for longer than its comms allow)."""
    import collections
    import gc
    import tracemalloc

    import dask.utils
    import psutil

    gc.collect()
    s = dask_scheduler
    snap = tracemalloc.take_snapshot().filter_traces([
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ])
    if dump:
        snap.dump(dump)
    logs = {}
    for address, bs in s.stream_comms.items():
        batches = list(bs.recent_message_log)
        messages = [m for b in batches if isinstance(b, list) for m in b]
        ops = collections.Counter(m.get("op") for m in messages if isinstance(m, dict))
        logs[address] = {"batches": len(batches), "messages": len(messages), "ops": dict(ops)}
    broker = getattr(s, "_broker", None)  # distributed 2024+: one topic per client, and "all", "scheduler", ...
    events = ({name: len(topic.events) for name, topic in broker._topics.items()} if broker is not None
              else {name: len(q) for name, q in getattr(s, "events", {}).items()})
    return {
        "rss_mb": round(psutil.Process().memory_info().rss / 2**20, 2),
        "traced_mb": round(tracemalloc.get_traced_memory()[0] / 2**20, 2),
        "tasks": len(s.tasks),
        "task_groups": len(s.task_groups),
        "task_prefixes": len(s.task_prefixes),
        "transition_log": len(getattr(s, "transition_log", ())),
        "event_topics": len(events),
        "events": sum(events.values()),
        "key_split_cache": dask.utils.key_split.cache_info().currsize,
        "spans": len(getattr(s.extensions.get("spans"), "spans", ())),
        "message_logs": logs,
        "plugins": list(s.plugins),
    }


def referrers(dask_scheduler=None, top=30):
    """Runs in the scheduler process: for the objects allocated in distributed's
    message handling (the sites that grow from flow to flow), the types of the
    containers that refer to them, counted by (allocation site, container, object)."""
    import collections
    import gc
    import tracemalloc
    from pathlib import Path

    gc.collect()

    def site(obj):
        tb = tracemalloc.get_object_traceback(obj)
        if tb is None:
            return None
        return " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(tb[-3:]))

    tally = collections.Counter()
    for container in gc.get_objects():
        if type(container).__name__ == "frame":
            continue
        for obj in gc.get_referents(container):
            if isinstance(obj, type):
                continue
            where = site(obj)
            if where is not None and ("distributed" in where or "scheduler.py" in where or "core.py" in where
                                      or "broker.py" in where or "utils.py" in where):
                tally[(where, type(container).__name__, type(obj).__name__)] += 1
    return [[*key, count] for key, count in tally.most_common(top)]


def compare(before: Path, after: Path, top: int = 15) -> list:
    """The allocation sites whose live bytes grew most from ``before`` to ``after``."""
    import tracemalloc

    old, new = tracemalloc.Snapshot.load(str(before)), tracemalloc.Snapshot.load(str(after))
    out = []
    for stat in new.compare_to(old, "traceback")[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback]
        out.append({"kb": round(stat.size_diff / 1024, 1), "count": stat.count_diff, "where": frames[-8:]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=4)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--stock", action="store_true", help="leave the shim uninstalled")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--referrers", action="store_true",
                        help="after the flows, what refers to the objects allocated in message handling")
    args = parser.parse_args()
    from scheduler_memory import Scheduler  # benchmarks/: a scheduler and a worker, stopped by handle

    work = Path(tempfile.mkdtemp(prefix="pfa-scheduler-growth-"))
    os.environ["DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP"] = "600s"  # a snapshot holds the scheduler's loop a while
    cluster = Scheduler(work, "growth", {"PYTHONTRACEMALLOC": str(args.frames)})
    address = cluster.address
    try:
        with services.prefect_server():
            from distributed import Client
            from prefect import flow
            from prefect_dask import DaskTaskRunner

            from prefect_future_anchor.demo import seed_tasks

            if not args.stock:
                import prefect_future_anchor

                prefect_future_anchor.install()

            task1, task2 = seed_tasks()[:2]

            @flow(task_runner=DaskTaskRunner(address=address), persist_result=False)
            def seed(pairs: int):
                kept = [task2.submit(task1.submit()) for _ in range(pairs)]
                return sum(f.result() for f in kept)

            with Client(address, set_as_default=False) as client:
                client.wait_for_workers(1, timeout=300)
                snaps = [work / f"flow-{i}.tracemalloc" for i in range(args.flows + 1)]
                print(json.dumps({"flow": 0, **client.run_on_scheduler(inspect, dump=str(snaps[0]))}), flush=True)
                for i in range(args.flows):
                    started = time.perf_counter()
                    assert seed(args.runs // 2) == 84 * (args.runs // 2)
                    wall = time.perf_counter() - started
                    deadline = time.monotonic() + 120
                    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
                        time.sleep(0.2)  # a bounded poll for the scheduler to forget the flow's keys
                    report = client.run_on_scheduler(inspect, dump=str(snaps[i + 1]))
                    print(json.dumps({"flow": i + 1, "wall": round(wall, 1), "load": os.getloadavg()[0], **report}),
                          flush=True)
                if args.referrers:
                    for row in client.run_on_scheduler(referrers):
                        print(json.dumps({"referrer": row}), flush=True)
            for i in range(1, args.flows + 1):
                print(json.dumps({"growth": f"flow {i - 1} -> {i}", "sites": compare(snaps[i - 1], snaps[i])}),
                      flush=True)
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
