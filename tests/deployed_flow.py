"""The flow that tests/test_deployment_real.py deploys to a process work pool and serves.

The seed pattern of upstream issue 17517 (10 x ``task2.submit(task1.submit())``,
only task2's futures kept) and then fire-and-forget runs submitted and never kept,
on a ``DaskTaskRunner`` with a small in-process LocalCluster.

It never imports prefect_future_anchor: it only reports, through its run logger
(so the test reads it back from the API), whether a start-up hook activated the
shim in this process.  Python 3.9 syntax (the matrix has a 3.9 row).

``python deployed_flow.py NAME`` serves the flow as deployment NAME.
"""

import os
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect_dask import DaskTaskRunner

SEED_PAIRS = 10
FORGOTTEN = 5
FORGOTTEN_SECONDS = 3.0
ACTIVATION_LINE = "deployed-seed: prefect-future-anchor installed="
END_LINE = "deployed-seed: fire-and-forget submitted, flow returns"


@task
def task1():
    return 42


@task
def task2(x):
    return x * 2


@task
def forgotten(marker_dir, i):
    """Fire-and-forget work: takes a moment, then leaves a file behind."""
    time.sleep(FORGOTTEN_SECONDS)
    Path(marker_dir, f"forgotten-{i}.done").write_text("done")
    return i


def _shim_report():
    shim = sys.modules.get("prefect_future_anchor")
    autostart = sys.modules.get("prefect_future_anchor.autostart")
    installed = bool(shim is not None and shim.is_installed())
    applied = ",".join(shim.status().applied) if installed else ""
    hook = getattr(autostart, "activated_by", None)
    return f"{ACTIVATION_LINE}{installed} applied={applied} hook={hook}"


@flow(
    name="deployed-seed",
    task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard_address": ":0"}
    ),
)
def deployed_seed(marker_dir: str):
    # The test waits for this process to end before it reads what the run left behind.
    Path(marker_dir, "flow.pid").write_text(str(os.getpid()))
    logger = get_run_logger()
    logger.info(_shim_report())
    results = []
    for _ in range(SEED_PAIRS):
        r1 = task1.submit()
        results.append(task2.submit(r1))
    wait(results)
    values = [f.result() for f in results]
    for i in range(FORGOTTEN):
        forgotten.submit(marker_dir, i)  # submitted, never kept, nothing depends on it
    logger.info(END_LINE)
    return values


@task
def held(marker_dir: str):
    """Runs until the test creates ``release`` (bounded), after writing ``held.started``."""
    Path(marker_dir, "held.started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 180
    while not Path(marker_dir, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return "released"


@flow(
    name="deployed-holder",
    task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard_address": ":0"}
    ),
)
def deployed_holder(marker_dir: str):
    """Submits one long run, keeps nothing, and returns once it runs: what happens next
    is the shim's wait at the end of the flow."""
    Path(marker_dir, "flow.pid").write_text(str(os.getpid()))
    held.submit(marker_dir)
    deadline = time.monotonic() + 120
    while not Path(marker_dir, "held.started").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    get_run_logger().info(_shim_report())


if __name__ == "__main__":
    deployed_seed.serve(name=sys.argv[1])
