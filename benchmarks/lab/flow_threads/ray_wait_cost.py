"""What one ``ray.wait(fetch_local=False, timeout=0)`` costs the calling thread, by refs listed.

    .nox/matrix-3-9-1/bin/python benchmarks/lab/flow_threads/ray_wait_cost.py

A local Ray (2 CPUs) and refs that never become ready while measured (calls of
``benchmarks/scale.py``'s gate actor, never opened), listed 1 to 2,000 at a time,
300 calls each: the calling thread's CPU and the wall time per call.  A watcher round is
one such call plus its bookkeeping, so the fixed part is what a round costs
whatever it lists.  For comparison, the crash check's reads of a ready ref
(``ray_errors.read``) on 2,000 small finished refs.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from scale import make_gate  # noqa: E402  (its gate: refs whose completion the caller controls)

LISTED = (1, 24, 80, 500, 2000)
CALLS = 300


def per_call(fn, calls: int) -> tuple:
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.thread_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def main() -> int:
    import ray

    from prefect_future_anchor import ray_errors

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        gate = make_gate(ray, max(LISTED) + 10)  # room for every hold and the calls beside them
        refs = [gate.hold.remote(i) for i in range(max(LISTED))]
        ray.get(gate.count.remote())  # the actor is up
        print("| refs listed | calling thread CPU per call | wall per call |")
        print("|---|---|---|")
        for n in LISTED:
            listed = refs[:n]
            cpu, wall = per_call(lambda: ray.wait(listed, num_returns=n, timeout=0, fetch_local=False), CALLS)
            print(f"| {n:,} | {cpu:.1f} µs | {wall:.1f} µs |")

        @ray.remote
        def small(i):
            return {"i": i, "payload": b"x" * 3000}

        done = [small.remote(i) for i in range(2000)]
        ray.wait(done, num_returns=len(done), fetch_local=False)
        cpu = time.thread_time()
        errors = [ray_errors.read(ref) for ref in done]
        cpu = time.thread_time() - cpu
        assert not any(errors)
        print(f"\nray_errors.read of a small finished ref: {cpu / len(done) * 1e6:.1f} µs of CPU each "
              f"({len(done):,} refs)")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
