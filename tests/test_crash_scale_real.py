"""Thousands of runs crashed at once: a Dask worker killed under every run of a flow.

Real parts: the session's Prefect server, a ``dask scheduler`` and one ``dask worker``
process with a thread per run (``allowed-failures=0``: the scheduler gives up on each
run at the worker's death).  Every run shows Running in the API before the worker
process is SIGKILLed by its pid.  ``PFA_CRASHED_AT_ONCE`` runs (CI: 100; ``./run
faults``: 2,000) all end Crashed in the API, and the runner's exit keeps its bound
(``outcomes.REPORT_TIMEOUT``) whatever the API's pace.  How many are Crashed by the
time the flow returns, and when the last one is, is printed (benchmarks/RESULTS.md):
the server's task-run recorder stores a few dozen reports a second on the loaded
2-core machine, so at 2,000 the last ones land after the flow returned.  Stock
control first, at the quick size (what stock does to a run does not depend on how
many there are): every run stays Running.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Dict, List

import pytest

from conftest import dask_processes_at, runners_available
from fault_tasks import DriverSide, sleeps
from prefect import flow
from prefect_future_anchor import outcomes

RUNS = int(os.environ.get("PFA_CRASHED_AT_ONCE", "100"))
STOCK_RUNS = min(RUNS, 100)


@pytest.fixture(scope="module")
def one_wide_worker(tmp_path_factory):
    if "dask" not in runners_available():
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    with dask_processes_at(
        tmp_path_factory.mktemp("wide-worker"),
        workers=1,
        nthreads=RUNS + 8,
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"},
    ) as (address, pids):
        yield address, pids


def api_states(task_run_ids: List[Any]) -> Dict[str, Any]:
    """The API's state of each run, by id (None: no record yet), read in pages."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    found: Dict[str, Any] = {str(key): None for key in task_run_ids}
    with get_client(sync_client=True) as client:
        for start in range(0, len(task_run_ids), 200):
            chunk = task_run_ids[start:start + 200]
            wanted = TaskRunFilter(id=TaskRunFilterId(any_=chunk))
            runs = client.read_task_runs(task_run_filter=wanted, limit=len(chunk))
            found.update((str(run.id), run.state) for run in runs)
    return found


def all_running(task_run_ids: List[Any], limit: float) -> None:
    """Readiness poll of the server: every run's engine has reported Running."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        states = api_states(task_run_ids).values()
        if all(state is not None and state.is_running() for state in states):
            return
        time.sleep(2)
    raise AssertionError(f"not every run showed Running within {limit}s")


def kill_under_every_run(address: str, worker_pid: int, runs: int) -> Any:
    """``runs`` runs, all Running, then their worker SIGKILLed; returns the futures,
    the moment of the kill and the seconds from the flow body's end to the flow's
    return (the flow run's completion, then the runner's exit)."""
    from prefect_dask import DaskTaskRunner

    here = DriverSide(kept=[], killed_at=[], ended_at=[], runs=runs)

    def every_run_crashes():
        here.kept.extend(sleeps.submit(3600) for _ in range(here.runs))
        all_running([f.task_run_id for f in here.kept], limit=300 + here.runs)
        here.killed_at.append(time.monotonic())
        os.kill(worker_pid, signal.SIGKILL)
        for future in here.kept:
            future.wait()
        here.ended_at.append(time.monotonic())

    flow(every_run_crashes, name="every-run-crashes", task_runner=DaskTaskRunner(address=address))()
    return here.kept, here.killed_at[0], time.monotonic() - here.ended_at[0]


def worker_pid(address: str) -> int:
    from distributed import Client

    with Client(address, timeout=60, set_as_default=False) as client:
        client.wait_for_workers(1, timeout=120)
        (pid,) = client.run(os.getpid).values()
    return pid


@pytest.mark.timeout(900 + 2 * RUNS)
def test_every_run_of_a_killed_worker_ends_crashed(one_wide_worker, shim):
    address, _pids = one_wide_worker
    stock, _killed_at, _exit = kill_under_every_run(address, worker_pid(address), STOCK_RUNS)
    states = api_states([f.task_run_id for f in stock])
    assert all(state is not None and state.is_running() for state in states.values())  # stock: zombies

    shim()
    kept, killed_at, exit_seconds = kill_under_every_run(address, worker_pid(address), RUNS)
    returned = time.monotonic() - killed_at
    ids = [f.task_run_id for f in kept]
    at_return = sum(state is not None and state.is_crashed() for state in api_states(ids).values())
    # the stated bound, with slack for a loaded machine
    assert exit_seconds < outcomes.REPORT_TIMEOUT + 30, exit_seconds
    deadline = time.monotonic() + 300
    while True:  # the recorder's lag: a bounded poll of the server
        crashed = sum(state is not None and state.is_crashed() for state in api_states(ids).values())
        if crashed == RUNS or time.monotonic() > deadline:
            break
        time.sleep(1)
    last = time.monotonic() - killed_at
    assert crashed == RUNS, f"{crashed} of {RUNS} Crashed {last:.0f} s after the kill"
    print(
        f"{RUNS} runs crashed at once: the flow returned {returned:.1f} s after the kill (its exit "
        f"{exit_seconds:.1f} s) with {at_return} Crashed in the API; all {RUNS} by {last:.1f} s"
    )
