"""Does a driver that keeps its parents' refs make Ray start more worker processes? (plain Ray, no Prefect)

    .nox/matrix-3-9-1/bin/python benchmarks/lab/flow_threads/plain_ray.py 1000 3 [drop,hold,release]

The seed's shape as prefect-ray submits it: per pair a new remote function for
the parent and one for the child (prefect-ray builds one per submit); the child
gets the parent's ref at top level (Ray waits for it) and again nested in a
dict, which it ``ray.get``s inside the worker.  Each task burns ``BUSY`` seconds
of CPU.  Sides, rotating after a warm-up flow of the first, each in a fresh
driver process on one local Ray head of 2 CPUs: ``drop`` (the driver keeps only
the children, as stock Prefect does), ``hold`` (it also keeps every parent's ref
until the end of the flow) and ``release`` (it keeps each parent's ref until that
parent's child has finished, as the shim lets a run go when its dependent
resolves).  Prints, per flow, wall time and the worker processes Ray
started for it.
"""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
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


def _release_as_children_finish(ray, parent_of) -> None:
    """Drop each parent's ref once its child has finished, as the shim lets a run go
    when its dependent resolves (one ``ray.wait`` over the children still running per
    round; the shim's watcher is cheaper, a thousand refs do not need it)."""
    pending = list(parent_of)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, fetch_local=False)
        for ref in ready:
            del parent_of[ref]


def one(side: str, pairs: int, address: str) -> None:
    import ray

    ray.init(address=address, logging_level="ERROR")
    import plain_ray  # by reference: the workers import it (PYTHONPATH)

    started = time.perf_counter()
    children, held = [], []
    parent_of = {}  # side "release": child ref -> its parent's ref, until the child is done
    for _ in range(pairs):
        up = ray.remote(plain_ray.parent).remote()
        children.append(ray.remote(plain_ray.child).remote(up, {"x": up}))
        if side == "hold":
            held.append(up)
        if side == "release":
            parent_of[children[-1]] = up
        del up
    if side == "release":
        releaser = threading.Thread(target=_release_as_children_finish, args=(ray, parent_of), daemon=True)
        releaser.start()
    total = sum(ray.get(children))
    if side == "release":
        releaser.join()
    wall = time.perf_counter() - started
    assert total == 84 * pairs
    ray.shutdown()
    print(json.dumps({"wall": round(wall, 2)}))


def main() -> None:
    import flow_threads

    pairs, repeats = int(sys.argv[1]), int(sys.argv[2])
    with services.ray_head(num_cpus=2, pythonpath=str(Path(__file__).resolve().parent)) as address:
        sides = sys.argv[3].split(",") if len(sys.argv) > 3 else ["drop", "hold"]
        # the first flow on the new head is a warm-up of the first side; then the sides rotate
        order = sides[:1] + [sides[(i + 1) % len(sides)] for i in range(repeats * len(sides))]
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
