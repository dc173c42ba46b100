"""Pair ratios of ``benchmarks/flow_scale.py`` JSON files, alone and pooled.

    python benchmarks/lab/flow_threads/pairs.py benchmarks/lab/flow_threads/round12/flow_scale_Y.json \
        benchmarks/lab/flow_threads/round11/flow_scale_X.json

For each file's Ray row (or ``--runner``), and for all the files' pairs pooled:
the per-pair ratios patched / stock (wall, driver CPU, and the flow thread's CPU
where recorded), the median of the sides' medians as ``flow_scale.py`` reports it,
the median pair ratio, and its 95% bootstrap interval (the pairs resampled,
10,000 draws, seed 0).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

from submit import interval  # noqa: E402  (the benchmarks' bootstrap interval of a median)

KEYS = ("wall", "cpu", "main_cpu")
DRAWS = 10000


def report(name, samples):
    print(f"{name}: {len(samples['stock'])} pairs")
    for key in KEYS:
        pairs = [(s[key], p[key]) for s, p in zip(samples["stock"], samples["patched"]) if key in s and key in p]
        if not pairs:
            continue
        ratios = [p / s for s, p in pairs]
        sides = statistics.median(p for _s, p in pairs) / statistics.median(s for s, _p in pairs)
        low, high = interval(ratios, resamples=DRAWS)
        print(f"  {key:9} pair ratios {' '.join(f'{r:.3f}' for r in ratios)}; median of sides {sides:.3f}; "
              f"median pair ratio {statistics.median(ratios):.3f} (95% {low:.3f}-{high:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--runner", default="ray")
    args = parser.parse_args()
    pooled = {"stock": [], "patched": []}
    for f in args.files:
        rows = [r for r in json.loads(Path(f).read_text())["rows"] if r["runner"] == args.runner]
        for row in rows:
            report(f"{f} ({row['runs']} runs)", row["samples"])
            for side in pooled:
                pooled[side] += row["samples"][side]
    if len(args.files) > 1:
        report("pooled", pooled)


if __name__ == "__main__":
    main()
