"""Does a driver that keeps its parents' refs make Ray start more worker processes? (plain Ray, no Prefect)

    .nox/matrix-3-9-1/bin/python research/flow_threads/plain_ray.py 1000 3

The seed's shape as prefect-ray submits it: per pair a new remote function for
the parent and one for the child (prefect-ray builds one per submit); the child
gets the parent's ref at top level (Ray waits for it) and again nested in a
dict, which it ``ray.get``s inside the worker.  Each task burns ``BUSY`` seconds
of CPU.  Sides, alternating, each in a fresh driver process on one local Ray
head of 2 CPUs: ``drop`` (the driver keeps only the children, as stock Prefect
does) and ``hold`` (it also keeps every parent's ref until the end of the
flow, as the shim holds each run).  Prints, per flow, wall time and the worker processes Ray
started for it.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402

BUSY = 0.03


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def parent() -> int:
    _burn(BUSY)
    return 42


def child(_top, nested) -> int:
    import ray

    _burn(BUSY)
    return ray.get(nested["x"]) * 2


def one(side: str, pairs: int, address: str) -> None:
    import ray

    ray.init(address=address, logging_level="ERROR")
    import plain_ray  # by reference: the workers import it (PYTHONPATH)

    started = time.perf_counter()
    children, held = [], []
    for _ in range(pairs):
        up = ray.remote(plain_ray.parent).remote()
        children.append(ray.remote(plain_ray.child).remote(up, {"x": up}))
        if side == "hold":
            held.append(up)
        del up
    total = sum(ray.get(children))
    wall = time.perf_counter() - started
    assert total == 84 * pairs
    ray.shutdown()
    print(json.dumps({"wall": round(wall, 2)}))


def main() -> None:
    import flow_threads

    pairs, repeats = int(sys.argv[1]), int(sys.argv[2])
    with services.ray_head(num_cpus=2, pythonpath=str(Path(__file__).resolve().parent)) as address:
        order = ["drop"] + [s for _ in range(repeats) for s in ("hold", "drop")] + ["hold"]
        for i, side in enumerate(order):
            before = flow_threads.worker_logs(address)
            out = subprocess.run([sys.executable, __file__, "--one", side, str(pairs), address],
                                 capture_output=True, text=True)
            started = len(flow_threads.worker_logs(address) - before)
            last = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
            print(f"{i} {side}: workers started {started}; {last}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
