"""The flow's process (the Dask client / Ray driver): peak memory, stock vs patched.

A flow of six tasks that each return 150 MB, consumed only by six other tasks;
the flow waits for the consumers.  Stock Prefect never pulls those values into
the flow's process; a completion callback that fetched them would (Ray's
``ObjectRef._on_completed`` does: 1,004 MB instead of 253 MB, FACTS.md).  Each
side runs in a fresh interpreter with a cluster of its own, stock and patched
alternating.  The figure is the process's own high-water mark, ``VmHWM`` of
/proc/self/status: ``ru_maxrss`` would not do, Linux carries it across
``execve`` from the forked copy of the parent (a large benchmark runner would
set the floor of every child's figure).

    python benchmarks/driver_memory.py ray [pairs]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402  (sets the environment before prefect is imported)

MB = 1_000_000
BIG = 150 * MB
GOAL_EXTRA_MB = 64


def big_results():
    from workload import consume_big, produce_big

    children = [consume_big.submit(produce_big.submit(i, BIG)) for i in range(6)]
    return [child.result() for child in children]


def _runner(kind: str):
    if kind == "ray":
        from prefect_ray import RayTaskRunner

        from ray_bench import _local_ray

        return RayTaskRunner(init_kwargs=_local_ray(2))
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(cluster_kwargs={"n_workers": 2, "threads_per_worker": 1, "processes": True})


def high_water_mb() -> float:
    """Peak resident memory of this process image (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def one_side(kind: str, side: str) -> Dict[str, float]:
    """One side in this (fresh) process: the peak RSS in MB."""
    import prefect_future_anchor
    from prefect import flow

    runner = _runner(kind)
    if side == "patched":
        report = prefect_future_anchor.install()
        assert f"{kind}.track" in report.applied, str(report)
    before = high_water_mb()
    result = flow(big_results, name=f"{kind}-memory-{side}", task_runner=runner, log_prints=False)()
    assert result == [BIG] * 6
    peak = high_water_mb()
    return {"peak_mb": peak, "before_mb": before}


def rows(kind: str, pairs: int):
    peaks: Dict[str, List[float]] = {"stock": [], "patched": []}
    for i in range(pairs):
        for side in ("stock", "patched") if i % 2 == 0 else ("patched", "stock"):
            out = subprocess.run(
                [sys.executable, str(Path(__file__)), "--side", kind, side],
                capture_output=True,
                text=True,
                timeout=900,
                env=dict(os.environ),
            )
            if out.returncode != 0:
                raise RuntimeError(f"{kind} {side} memory run failed:\n{out.stderr[-4000:]}")
            peaks[side].append(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
    stock, patched = statistics.median(peaks["stock"]), statistics.median(peaks["patched"])
    extra = patched - stock
    name = "Ray driver" if kind == "ray" else "Dask client process"
    return [
        (
            f"{name} peak RSS, 6 tasks x 150 MB consumed by 6 others (median of {pairs} fresh processes per side)",
            f"{stock:.0f} MB",
            f"{patched:.0f} MB",
            f"{extra:+.0f} MB",
            f"≤ +{GOAL_EXTRA_MB} MB",
            extra <= GOAL_EXTRA_MB,
        )
    ]


if __name__ == "__main__":
    import driver_memory  # as an importable module: its flow body travels by reference

    if sys.argv[1] == "--side":
        with services.prefect_server():
            print(json.dumps(driver_memory.one_side(sys.argv[2], sys.argv[3])))
    else:
        with services.prefect_server():
            for row in driver_memory.rows(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1):
                print(row)
