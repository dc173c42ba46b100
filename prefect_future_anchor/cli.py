"""``prefect-future-anchor`` command line: demo, status, run."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefect-future-anchor",
        description="Keep Prefect task-run futures alive on Dask and Ray until their dependents resolve.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the seed flow on real Dask and Ray, stock then shimmed")
    demo.add_argument("--runner", choices=["dask", "ray", "both"], default="both")
    status = commands.add_parser("status", help="detected releases and what each patch does here")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.runner)
    if args.command == "status":
        from .lifecycle import status as current

        report = current()
        print(report.to_json() if args.json else report)
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
