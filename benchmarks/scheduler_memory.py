"""A shared Dask scheduler's memory over repeated flow runs, stock against patched (issue 36).

    .nox/matrix-3-9-1/bin/python benchmarks/scheduler_memory.py                # 10 flows of 200, 3 flows of 2,000
    .nox/matrix-3-9-1/bin/python benchmarks/scheduler_memory.py --quick        # 3 flows of 100
    .nox/matrix-3-9-1/bin/python benchmarks/scheduler_memory.py --series 5x200 --save out.json

For each series three ``dask scheduler`` processes are started by hand, each with
one ``dask worker`` of 4 threads (all stopped by handle): one serves the stock
flows (the shim uninstalled), one the patched ones (``install()``: every
applicable patch), and one the same work with no Prefect at all (*Dask alone*:
per "flow" a new ``distributed.Client`` submitting the same number of tasks one
at a time, ``add(add(20, 22), 42)`` pairs, then closing).  Dask alone is the
floor: what distributed itself keeps per client and per submit, which no
client-side patch can remove.  The flows alternate, stock, patched, Dask alone,
the Prefect ones each ``DaskTaskRunner(address=...)`` with the seed's pattern
(``task2.submit(task1.submit())``, runs / 2 pairs).  After each flow, once its
scheduler holds no task and has run a garbage collection, the scheduler's RSS
is read.  The table gives the RSS after each flow and the growth per flow after
the first; ``--png`` draws the curves (the docs' picture).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402  (the Prefect server's address before prefect is imported)

FULL = ["10x200", "3x2000"]
SIDES = ("stock", "patched", "dask alone")
QUICK = ["3x100"]


def rss(dask_scheduler=None) -> float:
    """In the scheduler: its RSS in MB after a collection."""
    import gc

    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def tasks(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


class Scheduler:
    """A ``dask scheduler`` and one ``dask worker``, started as subprocesses and stopped by handle."""

    def __init__(self, work: Path, name: str, settings: "dict | None" = None) -> None:
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, DASK_DISTRIBUTED__WORKER__DAEMON="False", DASK_LOGGING__DISTRIBUTED="warning")
        scheduler_env = dict(env, **(settings or {}))
        file = work / f"{name}.json"
        self.procs = [
            subprocess.Popen(
                [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(file)],
                stdout=open(work / f"{name}-scheduler.log", "w"), stderr=subprocess.STDOUT, env=scheduler_env,
            )
        ]
        services._ready(lambda: file.exists(), self.procs[0], work / f"{name}-scheduler.log", "dask scheduler")
        self.address = json.loads(file.read_text())["address"]
        self.procs.append(
            subprocess.Popen(
                [str(bin_dir / "dask"), "worker", self.address, "--nthreads", "4", "--nworkers", "1", "--no-dashboard"],
                stdout=open(work / f"{name}-worker.log", "w"), stderr=subprocess.STDOUT, env=env,
            )
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def series(flows: int, runs: int, work: Path, settings: dict, sides: tuple = SIDES) -> dict:
    from distributed import Client
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    import prefect_future_anchor
    from prefect_future_anchor.demo import seed_tasks

    task1, task2 = seed_tasks()[:2]

    @flow(persist_result=False)
    def seed(pairs: int):
        kept = [task2.submit(task1.submit()) for _ in range(pairs)]
        return sum(f.result() for f in kept)

    out = {"flows": flows, "runs": runs, "scheduler_env": settings, **{side: [] for side in sides},
           "wall": {side: [] for side in sides}}
    schedulers = {side: Scheduler(work, f"{side.replace(' ', '-')}-{flows}x{runs}", settings) for side in sides}
    try:
        clients = {side: Client(s.address, timeout=60, set_as_default=False) for side, s in schedulers.items()}
        for side, client in clients.items():
            client.wait_for_workers(1, timeout=300)
            out[side].append(client.run_on_scheduler(rss))  # before the first flow
        for i in range(flows):
            for side in sides:
                if side == "patched":
                    prefect_future_anchor.install()
                else:
                    prefect_future_anchor.uninstall()
                started = time.perf_counter()
                if side == "dask alone":
                    total = dask_alone(schedulers[side].address, runs // 2)
                else:
                    total = seed.with_options(task_runner=DaskTaskRunner(address=schedulers[side].address))(runs // 2)
                out["wall"][side].append(time.perf_counter() - started)
                assert total == 84 * (runs // 2), total
                deadline = time.monotonic() + 120
                while clients[side].run_on_scheduler(tasks) and time.monotonic() < deadline:
                    time.sleep(0.2)  # a bounded poll for the scheduler to forget the flow's keys
                out[side].append(clients[side].run_on_scheduler(rss))
                print(f"  {flows}x{runs} flow {i + 1} {side}: scheduler RSS {out[side][-1]:.1f} MB", flush=True)
        for client in clients.values():
            client.close()
    finally:
        prefect_future_anchor.uninstall()
        for s in schedulers.values():
            s.stop()
    return out


def dask_alone(address: str, pairs: int) -> int:
    """The seed's work with no Prefect: a new client, ``pairs`` pairs submitted one
    task at a time (each its own key, as Prefect's runs are), the client closed."""
    import operator

    from distributed import Client

    with Client(address, timeout=60, set_as_default=False) as client:
        kept = [client.submit(operator.add, client.submit(operator.add, 20, 22, pure=False), 42, pure=False)
                for _ in range(pairs)]
        return sum(client.gather(kept))


def growth(values: list) -> float:
    """MB per flow after the first: (RSS after the last flow - after the first) / (flows - 1)."""
    return (values[-1] - values[1]) / max(1, len(values) - 2)


def table(results: list) -> str:
    lines = [
        "| flows x runs | side | scheduler RSS before, then after each flow (MB) | growth per flow after the first |",
        "|---|---|---|---|",
    ]
    for r in results:
        for side in (side for side in SIDES if side in r):
            values = ", ".join(f"{v:.1f}" for v in r[side])
            lines.append(f"| {r['flows']} x {r['runs']} | {side} | {values} | {growth(r[side]):.2f} MB |")
    return "\n".join(lines)


def draw(results: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        for side, style, color in (("stock", "o-", "C0"), ("patched", "s-", "C1"), ("dask alone", "^:", "C2")):
            if side in r:
                label = side if side != "dask alone" else "Dask alone (no Prefect)"
                ax.plot(range(len(r[side])), r[side], style, color=color, label=label)
        settings = ", ".join(f"{k.replace('DASK_DISTRIBUTED__', '').lower()}={v}" for k, v in r.get("scheduler_env", {}).items())
        ax.set_title(f"flows of {r['runs']} runs, one shared scheduler" + (f"\n{settings}" if settings else ""), fontsize=10)
        ax.set_xlabel("flow runs finished")
        ax.set_ylabel("scheduler RSS (MB)")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"the small size ({', '.join(QUICK)})")
    parser.add_argument("--series", help="comma-separated FLOWSxRUNS (default: " + ", ".join(FULL) + ")")
    parser.add_argument("--save", type=Path, help="write the samples as JSON")
    parser.add_argument("--png", type=Path, help="draw the curves")
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, of {', '.join(SIDES)} (default: all)")
    parser.add_argument("--scheduler-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the schedulers started (Dask settings such as "
                        "DASK_DISTRIBUTED__SCHEDULER__EVENTS_CLEANUP_DELAY=1s); may be repeated")
    args = parser.parse_args()
    wanted = args.series.split(",") if args.series else (QUICK if args.quick else FULL)
    sides = tuple(side.strip() for side in args.sides.split(","))
    if not sides or set(sides) - set(SIDES):
        parser.error(f"--sides takes a comma-separated list of {', '.join(SIDES)}, got {args.sides!r}")
    settings = {}
    for item in args.scheduler_env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--scheduler-env takes NAME=VALUE, got {item!r}")
        settings[name] = value
    work = Path(tempfile.mkdtemp(prefix="pfa-scheduler-memory-"))
    print(f"load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    results = []
    with services.prefect_server():
        for item in wanted:
            flows, runs = (int(x) for x in item.lower().split("x"))
            results.append(series(flows, runs, work, settings, sides))
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    print(table(results))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1))
    if args.png:
        draw(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
