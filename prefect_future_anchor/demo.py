"""``prefect-future-anchor demo``: the seed flow of upstream issue 17517 and a
fire-and-forget flow, on a real Dask LocalCluster and a real local Ray, stock
then shimmed, against a Prefect server started for the demo.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

from .server import dask_cluster, prefect_server

GC_WARNING = "garbage collected before it resolved"


class GcWarningCounter(logging.Handler):
    """Counts Prefect's "A future was garbage collected before it resolved" records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if GC_WARNING in record.getMessage():
            self.count += 1


@contextlib.contextmanager
def counting_gc_warnings() -> Iterator[GcWarningCounter]:
    """A :class:`GcWarningCounter` on the ``prefect`` logger while the block runs."""
    # Prefect sets its logging up (dictConfig, which replaces the handlers of the
    # ``prefect`` logger) on first use of its top-level API: let that happen first.
    from prefect import flow  # noqa: F401

    counter = GcWarningCounter()
    logger = logging.getLogger("prefect")
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)


@functools.lru_cache(maxsize=None)
def seed_tasks():
    """``task1``, ``task2`` of the seed flow and the fire-and-forget ``touch``
    (made on first use: importing this module does not import prefect)."""
    from prefect import task

    @task
    def task1():
        return 42

    @task
    def task2(x):
        return x * 2

    @task
    def touch(directory: str, i: int):
        time.sleep(0.5)
        Path(directory, f"{i}.done").write_text("done")

    return task1, task2, touch


def seed_flow(runner) -> List[int]:
    """Upstream issue 17517: 10 x task2.submit(task1.submit()), only task2's futures kept."""
    from prefect import flow
    from prefect.futures import wait

    task1, task2, _touch = seed_tasks()

    @flow(name="seed", task_runner=runner)
    def seed():
        results = []
        for _ in range(10):
            r1 = task1.submit()
            results.append(task2.submit(r1))
        wait(results)
        return [f.result() for f in results]

    return seed()


def fire_and_forget_flow(runner, directory: str) -> None:
    """10 x touch.submit(i) with the futures dropped; the flow returns at once."""
    from prefect import flow

    _task1, _task2, touch = seed_tasks()

    @flow(name="fire-and-forget", task_runner=runner)
    def fire_and_forget():
        for i in range(10):
            touch.submit(directory, i)

    fire_and_forget()


def _measure(make_runner, label: str, scratch: str) -> Dict[str, object]:
    import prefect_future_anchor

    with counting_gc_warnings() as counter:
        results = seed_flow(make_runner())
        prefect_future_anchor.wait_released(120)
        gc.collect()
        warnings = counter.count
        directory = tempfile.mkdtemp(dir=scratch)
        fire_and_forget_flow(make_runner(), directory)
        prefect_future_anchor.wait_released(120)
        done = len(list(Path(directory).glob("*.done")))
    return {
        "label": label,
        "warnings": warnings,
        "results_ok": results == [84] * 10,
        "fire_and_forget": done,
    }


def run_demo(which: str = "both") -> int:
    os.environ.setdefault("PREFECT_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    import prefect_future_anchor

    logging.getLogger("distributed").setLevel(logging.WARNING)
    rows = []
    with prefect_server(), tempfile.TemporaryDirectory() as scratch:
        if which in ("dask", "both"):
            from prefect_dask import DaskTaskRunner

            with dask_cluster(n_workers=2, threads_per_worker=1) as address:

                def dask_runner():
                    return DaskTaskRunner(address=address)

                prefect_future_anchor.uninstall()
                rows.append(_measure(dask_runner, "DaskTaskRunner, stock", scratch))
                prefect_future_anchor.install()
                rows.append(_measure(dask_runner, "DaskTaskRunner, shimmed", scratch))
                prefect_future_anchor.uninstall()
        if which in ("ray", "both"):
            from prefect_ray import RayTaskRunner

            def ray_runner():
                # address="local": a new local instance even if another Ray runs on this machine
                return RayTaskRunner(
                    init_kwargs={
                        "address": "local",
                        "_node_ip_address": "127.0.0.1",
                        "num_cpus": 2,
                        "include_dashboard": False,
                    }
                )

            prefect_future_anchor.uninstall()
            rows.append(_measure(ray_runner, "RayTaskRunner, stock", scratch))
            prefect_future_anchor.install()
            rows.append(_measure(ray_runner, "RayTaskRunner, shimmed", scratch))
            prefect_future_anchor.uninstall()
    report = prefect_future_anchor.status()
    versions = ", ".join(f"{k} {v}" for k, v in report.versions.items())
    print()
    print(f"Seed flow of PrefectHQ/prefect#17517 and a fire-and-forget flow ({versions})")
    print()
    print("| runner | 'garbage collected' warnings | seed results correct | fire-and-forget runs completed |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['label']} | {row['warnings']} | {'yes' if row['results_ok'] else 'NO'} | "
            f"{row['fire_and_forget']} of 10 |"
        )
    shimmed_ok = all(
        row["warnings"] == 0 and row["results_ok"] and row["fire_and_forget"] == 10
        for row in rows
        if str(row["label"]).endswith("shimmed")
    )
    return 0 if shimmed_ok else 1
