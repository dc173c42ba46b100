"""Run every benchmark and print one markdown table (stock vs patched, ratio, goal).

    .venv/bin/python benchmarks/run.py            # the full set, about an hour on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # every benchmark, small sizes (about 5 min)

Ratios are patched / stock, both measured side by side in this one process
(alternating, medians).  Nothing here asserts a time: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import services  # noqa: E402  (sets the environment before prefect is imported)

SIZES = {
    "full": dict(submit_alternations=12, submit_alternation_batch=100, submit_rounds=15, submit_batch=50, wall_pairs=2,
                 wall_tasks=1000, memory_rounds=2000, startup_runs=150, driver_pairs=3),
    "quick": dict(submit_alternations=6, submit_alternation_batch=10, submit_rounds=4, submit_batch=20, wall_pairs=1,
                  wall_tasks=100, memory_rounds=100, startup_runs=20, driver_pairs=1),
}


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        mem_gb = int(mem.split()[1]) / 1024 / 1024
    except Exception:
        mem_gb = float("nan")
    from importlib.metadata import version

    releases = ", ".join(
        f"{d} {version(d)}" for d in ("prefect", "prefect-dask", "prefect-ray", "distributed", "prefect-future-anchor")
    )
    return (
        f"{os.cpu_count()} CPUs ({cpu}), {mem_gb:.1f} GB RAM, load average {os.getloadavg()[0]:.1f} at start; "
        f"Python {platform.python_version()}; {releases}"
    )


def startup_rows(runs: int):
    import startup

    python = sys.executable
    startup.check(python)
    results = startup.measure(python, runs)
    out = []
    for what, samples in results.items():
        base = statistics.median(samples["unset"])
        on = statistics.median(samples["PREFECT_FUTURE_ANCHOR=1"])
        out.append(
            (f"start-up, {what}, switch on vs unset (median of {runs})", f"{base:.2f} ms", f"{on:.2f} ms",
             f"{on - base:+.2f} ms", "≤ +3 ms", on - base <= 3.0)
        )
    return out


def progress(new_rows, started):
    """Print each part's rows as soon as it is done (a long run shows its way)."""
    for row in new_rows:
        print(f"[{time.monotonic() - started:6.0f} s] {row}", file=sys.stderr, flush=True)
    return new_rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: shows the benchmarks still work")
    parser.add_argument("--ray-only", action="store_true", help="only the Ray rows (for the newest release row)")
    args = parser.parse_args(argv)
    size = SIZES["quick" if args.quick else "full"]
    header = machine()
    started = time.monotonic()
    rows = []
    with services.prefect_server():
        import driver_memory
        import flow_wall
        import memory
        import ray_bench
        import submit

        parts = [
            lambda: driver_memory.rows("ray", size["driver_pairs"]),
            lambda: ray_bench.submit_rows(size["submit_rounds"], size["submit_batch"] // 2),
        ]
        if not args.ray_only:
            parts = [
                lambda: submit.rows(size["submit_alternations"], size["submit_alternation_batch"]),
                lambda: driver_memory.rows("dask", size["driver_pairs"]),
                *parts,
                lambda: flow_wall.rows(size["wall_pairs"], size["wall_tasks"]),
                lambda: memory.rows(size["memory_rounds"]),
            ]
        for part in parts:
            rows += progress(part(), started)
    rows += progress(ray_bench.watcher_rows(3 if args.quick else 10, 20 if args.quick else 100), started)
    if not args.ray_only:
        rows += progress(startup_rows(size["startup_runs"]), started)
    print()
    what = ("quick" if args.quick else "full") + (" Ray-only" if args.ray_only else "")
    print(f"{what} run, {time.monotonic() - started:.0f} s; {header}")
    print()
    print("| benchmark | stock | patched | ratio | goal | met? |")
    print("|---|---|---|---|---|---|")
    for name, stock, patched, ratio, goal, met in rows:
        print(f"| {name} | {stock} | {patched} | {ratio} | {goal} | {'yes' if met else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
