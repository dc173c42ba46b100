"""What ``PREFECT_FUTURE_ANCHOR=1`` adds to interpreter start-up (budget: 3 ms).

Alternates many runs of ``python -c pass`` with the variable unset, set to 1
and set to 0 in one process (the order rotates every round, so drift in the
machine's load hits every condition alike) and prints the median wall time of
each and the medians' differences; a second table gives the CPU time of ``site.main()``
(where the .pth hook runs) inside the process, free of fork/exec noise.  On the
2-core machines only medians of many alternations mean anything.

    .venv/bin/python benchmarks/startup.py [--runs 200] [--python PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

CONDITIONS = {
    "unset": None,
    "PREFECT_FUTURE_ANCHOR=1": "1",
    "PREFECT_FUTURE_ANCHOR=0": "0",
}


def environment(value):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_FUTURE_ANCHOR"}
    if value is not None:
        env["PREFECT_FUTURE_ANCHOR"] = value
    return env


def check(python: str) -> None:
    """The hook must really load with the variable set, or the figures mean nothing."""
    probe = "import sys; print(any(getattr(f, 'prefect_future_anchor_hook', None) for f in sys.meta_path))"
    for name, value in CONDITIONS.items():
        out = subprocess.run(
            [python, "-c", probe], env=environment(value), capture_output=True, text=True, check=True
        ).stdout.strip()
        if out != str(value == "1"):
            raise SystemExit(
                f"{name}: start-up hook armed = {out}; is prefect-future-anchor installed in {python}?"
            )


#: In-process: the CPU time site.main() takes (where the .pth lines run),
#: free of fork/exec noise and of waiting for a busy CPU.
SITE_MAIN = (
    "import time; t = time.thread_time(); import site; site.main(); "
    "print((time.thread_time() - t) * 1000.0)"
)


def measure(python: str, runs: int) -> Dict[str, Dict[str, List[float]]]:
    """Per condition: wall ms of ``python -c pass`` and in-process ms of site.main()."""
    envs = {name: environment(value) for name, value in CONDITIONS.items()}
    names = list(envs)
    wall: Dict[str, List[float]] = {name: [] for name in names}
    site: Dict[str, List[float]] = {name: [] for name in names}
    for _ in range(5):  # warm the page cache
        for name in names:
            subprocess.run([python, "-c", "pass"], env=envs[name], check=True)
    for round_ in range(runs):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            start = time.perf_counter()
            subprocess.run([python, "-c", "pass"], env=envs[name], check=True)
            wall[name].append((time.perf_counter() - start) * 1000.0)
            out = subprocess.run(
                [python, "-S", "-c", SITE_MAIN], env=envs[name], check=True, capture_output=True, text=True
            ).stdout
            site[name].append(float(out))
    return {"python -c pass (wall)": wall, "site.main() (in-process CPU time)": site}


def quartiles(values: List[float]):
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def table(samples: Dict[str, List[float]]) -> str:
    """One row per condition; the last column is the median minus the "unset" median."""
    base = statistics.median(samples["unset"])
    lines = [
        f"{'condition':<26} {'runs':>5} {'p25 ms':>8} {'median ms':>10} {'p75 ms':>8} {'vs unset ms':>12}",
    ]
    for name, values in samples.items():
        p25, median, p75 = quartiles(values)
        lines.append(
            f"{name:<26} {len(values):>5} {p25:>8.2f} {median:>10.2f} {p75:>8.2f} {median - base:>+12.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="rounds; each round runs every condition once")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter with prefect-future-anchor installed"
    )
    args = parser.parse_args(argv)
    check(args.python)
    results = measure(args.python, args.runs)
    bytecode = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    print(f"{args.python}, {args.runs} alternating rounds, PYTHONDONTWRITEBYTECODE={bytecode!r}")
    for what, samples in results.items():
        print()
        print(what)
        print(table(samples))
    wall = results["python -c pass (wall)"]
    added = statistics.median(wall["PREFECT_FUTURE_ANCHOR=1"]) - statistics.median(wall["unset"])
    print()
    print(
        f"PREFECT_FUTURE_ANCHOR=1 adds {added:+.2f} ms to python -c pass (difference of medians); budget 3 ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
