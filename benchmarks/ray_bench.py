"""Ray: what the shim costs the flow's process (the Ray driver), stock vs patched.

(The driver's peak memory with large results, on Ray and Dask, is
``driver_memory.py``.)
- **submit**: per-submit time of ``RayTaskRunner.submit``, stock (the function
  the wrapt wrapper wraps) and patched alternating submit by submit, on a local
  Ray with no CPUs (nothing runs; the submits are cancelled in batches), plus the
  shim's own work inside a patched submit.
- **watcher**: the CPU the completion watcher thread uses while nothing is
  pending and while 200 runs are pending, and the delay from a run becoming
  ready to its release.

    python benchmarks/ray_bench.py                  # every Ray row, full sizes
    python benchmarks/ray_bench.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402  (sets the environment before prefect is imported)

# -- submit ------------------------------------------------------------------------------


SUBMIT: Dict[str, List[float]] = {}


def submit_body(count: int) -> None:
    import ray
    from prefect.context import FlowRunContext
    from prefect_ray.task_runners import RayTaskRunner

    from prefect_future_anchor.ray_runner import runtime as integration
    from submit import shim_work_timer
    from workload import inc

    runner = FlowRunContext.get().task_runner
    stock_submit = RayTaskRunner.submit.__wrapped__
    call = {"patched": runner.submit, "stock": lambda t, p: stock_submit(runner, t, p)}
    futures = []
    try:
        for side in ("stock", "patched") * 3:
            futures.append(call[side](inc, {"x": 1}))
        with shim_work_timer(SUBMIT["shim work"], integration):
            for i in range(count):
                for side in ("stock", "patched") if i % 2 == 0 else ("patched", "stock"):
                    start = time.perf_counter()
                    futures.append(call[side](inc, {"x": 1}))
                    SUBMIT[side].append(time.perf_counter() - start)
                if len(futures) >= 100:
                    for f in futures:
                        ray.cancel(f.wrapped_future, force=True)
                    futures.clear()
    finally:
        for f in futures:
            ray.cancel(f.wrapped_future, force=True)


def submit_rows(rounds: int, batch: int):
    import prefect_future_anchor
    from prefect import flow
    from prefect_ray import RayTaskRunner

    SUBMIT.clear()
    SUBMIT.update({"stock": [], "patched": [], "shim work": []})
    prefect_future_anchor.install()
    try:
        # num_cpus=0: the submits queue (infeasible), nothing runs on the 2 cores
        runner = RayTaskRunner(init_kwargs=_local_ray(0))
        flow(submit_body, name="bench-ray-submit", task_runner=runner, log_prints=False)(rounds * batch)
    finally:
        prefect_future_anchor.uninstall()
    stock = statistics.median(SUBMIT["stock"]) * 1e6
    patched = statistics.median(SUBMIT["patched"]) * 1e6
    work = statistics.median(SUBMIT["shim work"]) * 1e6
    n = len(SUBMIT["stock"])
    return [
        (f"Ray submit, scalar parameter (median of {n} alternating submits per side)", f"{stock:.0f} µs",
         f"{patched:.0f} µs", f"{patched / stock:.3f}", "≤ 1.02", patched / stock <= 1.02),
        (f"Ray submit: the shim's own work per patched submit (median of {n})", "–", f"{work:.0f} µs",
         f"{1 + work / stock:.4f}", "≤ 1.02", 1 + work / stock <= 1.02),
    ]


# -- watcher: idle CPU and release delay ---------------------------------------------------


def _thread_cpu(native_id: int) -> float:
    import psutil

    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def watcher_rows(seconds: float, releases: int):
    import ray

    from prefect_future_anchor.ray_watch import IDLE_SECONDS, Watcher

    ray.init(**_local_ray(1))
    try:

        @ray.remote(num_cpus=1)
        def quick(i):
            return i

        @ray.remote(num_cpus=2)  # never runs on a 1-CPU Ray: stays pending
        def never():
            return None

        watcher = Watcher()
        # idle: nothing pending -> the thread sleeps on a condition
        first = quick.remote(0)
        done = threading.Event()
        watcher.watch(first, done.set, lambda: None)
        assert done.wait(60)
        native = watcher._thread.native_id if watcher._thread else None
        cpu0 = _thread_cpu(native) if native else 0.0
        time.sleep(seconds)  # measuring an interval, not synchronising
        idle = (_thread_cpu(native) - cpu0) / seconds if native else 0.0

        # 2,000 runs pending for the whole interval
        pending = [never.remote() for _ in range(2000)]
        for ref in pending:
            watcher.watch(ref, lambda: None, lambda: None)
        rounds0 = watcher.rounds
        cpu0 = _thread_cpu(watcher._thread.native_id)
        time.sleep(seconds)
        busy = (_thread_cpu(watcher._thread.native_id) - cpu0) / seconds
        rounds = (watcher.rounds - rounds0) / seconds

        # release delay: ready (seen by a plain ray.wait on another thread) -> callback
        delays = []
        for i in range(releases):
            ref = quick.remote(i)
            released = threading.Event()
            stamp = {}
            watcher.watch(ref, lambda: (stamp.setdefault("released", time.perf_counter()), released.set()), lambda: None)
            ray.wait([ref], num_returns=1, timeout=60, fetch_local=False)
            seen = time.perf_counter()
            assert released.wait(60)
            delays.append(max(0.0, stamp["released"] - seen))
        for ref in pending:
            ray.cancel(ref, force=True)
        watcher.pause()
    finally:
        ray.shutdown()
    delays.sort()
    p50 = statistics.median(delays) * 1e3
    p95 = delays[int(0.95 * (len(delays) - 1))] * 1e3
    return [
        (f"Ray watcher CPU, nothing pending ({seconds:g} s)", "–", f"{idle * 100:.2f}% of a core", "–", "≈ 0", idle < 0.005),
        (f"Ray watcher CPU, 2,000 runs pending ({seconds:g} s, {rounds:.1f} ray.wait/s)", "–",
         f"{busy * 100:.2f}% of a core", "–", "≤ 2% of a core", busy <= 0.02),
        # One run at a time: each round finds one, so rounds space out to IDLE_SECONDS.
        (f"Ray release delay after a run is ready, one at a time (median / p95 of {releases}; rounds up to "
         f"{IDLE_SECONDS:g} s apart)", "–", f"{p50:.1f} / {p95:.1f} ms", "–",
         f"≤ {IDLE_SECONDS * 1e3 + 20:.0f} ms (p95)", p95 <= IDLE_SECONDS * 1e3 + 20),
    ]


def _local_ray(num_cpus: int) -> dict:
    """init_kwargs for a Ray of this process's own (never a cluster another program
    left running), whose workers import this directory's modules."""
    return {
        "address": "local",
        "num_cpus": num_cpus,
        "include_dashboard": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": str(HERE)}},
    }


def rows(quick: bool = False):
    out = []
    with services.prefect_server():
        out += submit_rows(2 if quick else 10, 10 if quick else 25)
    out += watcher_rows(3 if quick else 10, 20 if quick else 100)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    for row in rows(args.quick):
        print(row)
    return 0


if __name__ == "__main__":
    import ray_bench  # as an importable module: its flow bodies travel by reference

    sys.exit(ray_bench.main())
