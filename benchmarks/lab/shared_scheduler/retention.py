"""What a long-lived Dask scheduler keeps from each Prefect flow run (issue 36).

    .nox/matrix-3-9-1/bin/python benchmarks/lab/shared_scheduler/retention.py --flows 4 --runs 200

Starts a ``dask scheduler`` and one ``dask worker`` (4 threads) as
subprocesses (stopped by handle), runs ``--flows`` flows of ``--runs``
seed-pattern runs (``task2.submit(task1.submit())``) with
``DaskTaskRunner(address=...)``, and after each flow, once the scheduler holds
no task and a collection ran there, reads the scheduler's RSS and asks the
scheduler itself (``Client.run_on_scheduler``) what it holds: its task,
task-group and task-prefix tables, its transition log and event topics, the
``computations`` history, the spans extension, and which live objects in the
scheduler process are Prefect ``Task`` objects or serialized contexts, with
the chain of containers that keeps one of them alive.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: services

import services  # noqa: E402  (the Prefect server's address before prefect is imported)


def inspect_scheduler(dask_scheduler=None):
    """Runs in the scheduler process."""
    import collections
    import gc

    import psutil

    gc.collect()
    s = dask_scheduler
    found = collections.Counter()
    kinds = collections.Counter()
    sample = None
    contexts = 0
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        kinds[name] += 1
        if name.startswith("prefect.") or name.startswith("prefect_dask."):
            found[name] += 1
            if sample is None and name == "prefect.tasks.Task":
                sample = obj
        elif kind is dict and "settings_context" in obj and "flow_run_context" in obj:
            contexts += 1

    def chain(obj, depth=200):
        """Types of the containers that keep ``obj`` alive, nearest first."""
        path = []
        seen = {id(obj)}
        current = obj
        for _ in range(depth):
            referrers = [r for r in gc.get_referrers(current)
                         if id(r) not in seen and not isinstance(r, type(sys._getframe()))
                         and r is not path]
            if not referrers:
                break
            current = referrers[0]
            seen.add(id(current))
            label = type(current).__qualname__
            if isinstance(current, dict):
                keys = [k for k in list(current)[:4]]
                label += f"{keys}"
            elif isinstance(current, (list, tuple)) or hasattr(current, "maxlen"):
                label += f"(len {len(current)})"
            path.append(label[:120])
        return path

    import sys

    def holders():
        """The scheduler's attributes (and extensions) from which a Prefect Task is reachable."""
        if sample is None:
            return None
        roots = {f"Scheduler.{k}": v for k, v in vars(s).items()}
        roots.update({f"extension {k}": v for k, v in s.extensions.items()})
        reaching = {}
        for name, root in roots.items():
            stack, visited, steps = [root], {id(s)}, 0
            while stack and steps < 3_000_000:
                current = stack.pop()
                if id(current) in visited:
                    continue
                visited.add(id(current))
                steps += 1
                if current is sample:
                    reaching[name] = steps
                    break
                if isinstance(current, type) or type(current).__name__ in ("module", "Scheduler"):
                    continue
                stack.extend(gc.get_referents(current))
        return reaching

    spans = s.extensions.get("spans")
    return {
        "rss_mb": psutil.Process().memory_info().rss / 2**20,
        "tasks": len(s.tasks),
        "task_groups": len(s.task_groups),
        "task_prefixes": len(s.task_prefixes),
        "transition_log": len(getattr(s, "transition_log", ())),
        "transition_counter": getattr(s, "transition_counter", None),
        "events": {topic: len(q) for topic, q in getattr(s, "_events", {}).items()} if hasattr(s, "_events") else None,
        "computations": len(getattr(s, "computations", ())),
        "spans": len(getattr(spans, "spans", {})) if spans is not None else None,
        "span_groups": sum(len(getattr(sp, "groups", ())) for sp in getattr(spans, "spans", {}).values()) if spans else None,
        "prefect_objects": dict(found.most_common(12)),
        "objects": dict(kinds.most_common(25)),
        "message_log": {address: (len(bs.recent_message_log), sum(len(b) for b in bs.recent_message_log))
                        for address, bs in s.stream_comms.items()},
        "serialized_contexts": contexts,
        "task_kept_by": chain(sample)[:3] if sample is not None else None,
        "reachable_from": holders(),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flows", type=int, default=4)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--shim", action="store_true", help="install() before the flows")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    work = Path(tempfile.mkdtemp(prefix="pfa-shared-scheduler-"))
    scheduler_file = work / "scheduler.json"
    env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False", DASK_LOGGING__DISTRIBUTED="warning")
    scheduler = subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                 stdout=open(work / "scheduler.log", "w"), stderr=subprocess.STDOUT, env=env)
    worker = None
    try:
        services._ready(lambda: scheduler_file.exists(), scheduler, work / "scheduler.log", "dask scheduler")
        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "4", "--nworkers", "1",
                                   "--no-dashboard"], stdout=open(work / "worker.log", "w"),
                                  stderr=subprocess.STDOUT, env=env)
        with services.prefect_server():
            from distributed import Client
            from prefect import flow
            from prefect_dask import DaskTaskRunner

            from prefect_future_anchor.demo import seed_tasks

            if args.shim:
                import prefect_future_anchor

                prefect_future_anchor.install()

            task1, task2 = seed_tasks()[:2]

            @flow(task_runner=DaskTaskRunner(address=address))
            def seed(pairs: int):
                kept = [task2.submit(task1.submit()) for _ in range(pairs)]
                return sum(f.result() for f in kept)

            with Client(address) as client:
                client.wait_for_workers(1, timeout=300)
                print(json.dumps({"before": client.run_on_scheduler(inspect_scheduler)}), flush=True)
                for i in range(args.flows):
                    assert seed(args.runs // 2) == 84 * (args.runs // 2)
                    deadline = time.monotonic() + 120
                    while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) and time.monotonic() < deadline:
                        time.sleep(0.2)  # a poll for the scheduler to forget the flow's keys, bounded
                    report = client.run_on_scheduler(inspect_scheduler)
                    print(json.dumps({"flow": i + 1, "load": os.getloadavg()[0], **report}), flush=True)
    finally:
        for proc in (worker, scheduler):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
