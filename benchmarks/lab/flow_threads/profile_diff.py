"""Compare py-spy's collapsed stacks (``flow_threads.py`` with ``PFA_PYSPY_DIR``) by side.

    python benchmarks/lab/flow_threads/profile_diff.py DIR [--thread MainThread] [--top 30]

Each ``DIR/<side>-<n>.txt`` holds one flow process's samples (20 Hz, ``-t``: the
first frame names the thread).  Per side, the mean over its files of the seconds
sampled in each function (inclusive: a function counted once per sample it is
on the stack of), for the samples of the chosen thread whose stack passes
through the flow (``seed_pairs``, or the runner's exit): the warm-up flow and
the imports before it are in the files too, and are left out by that filter only
if ``--flow-only`` is given.  Printed: the functions whose mean differs most
between the two sides named first and second.
"""

import argparse
import collections
import statistics
from pathlib import Path

RATE = 20.0


def load(path: Path, thread: str, flow_only: bool):
    inclusive, self_time, total = collections.Counter(), collections.Counter(), 0.0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if thread and thread not in frames[0]:
            continue
        if flow_only and not any(f.startswith("seed_pairs") or f.startswith("timed_seed_pairs") for f in frames):
            continue
        seconds = int(count) / RATE
        total += seconds
        for name in set(frames[1:]):
            inclusive[name] += seconds
        if len(frames) > 1:
            self_time[frames[-1]] += seconds
    return total, inclusive, self_time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--sides", default="stock,patched")
    parser.add_argument("--thread", default="MainThread")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--flow-only", action="store_true")
    parser.add_argument("--self", action="store_true", help="self time (the innermost frame) instead of inclusive")
    args = parser.parse_args()
    sides = args.sides.split(",")
    per_side = {}
    for side in sides:
        files = sorted(Path(args.dir).glob(f"{side}-*.txt"))
        loaded = [load(f, args.thread, args.flow_only) for f in files]
        per_side[side] = loaded
        print(f"{side}: {len(files)} files, seconds sampled on {args.thread!r}:",
              ", ".join(f"{t:.1f}" for t, _i, _s in loaded))
    a, b = sides
    pick = 2 if args.self else 1
    names = set()
    for side in sides:
        for entry in per_side[side]:
            names |= set(entry[pick])
    mean = {side: {n: statistics.mean(e[pick][n] for e in per_side[side]) for n in names} for side in sides}
    rows = sorted(names, key=lambda n: -abs(mean[b][n] - mean[a][n]))[: args.top]
    print(f"\n{'function':70} {a:>9} {b:>9} {'diff':>8}")
    for n in rows:
        print(f"{n[:70]:70} {mean[a][n]:9.2f} {mean[b][n]:9.2f} {mean[b][n] - mean[a][n]:+8.2f}")


if __name__ == "__main__":
    main()
