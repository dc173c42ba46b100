"""Issue 33: what an operator sees and controls while the shim waits at the end of a flow.

Real Prefect server with logging to the API on (as in production), real Dask
cluster and Ray head.  What is asserted is read back through the API: the flow
run's own logs, its state while the drain waits, the task runs' final states.
Each behaviour of the ``flow.drain-in-run`` patch (the drain inside the running
flow run) is shown beside its control: the same flow with that patch switched
off, where the drain happens at the runner's exit, after Prefect marked the run
Completed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import time
import uuid
from pathlib import Path

import pytest

import flows
from conftest import runners_available

RUNNERS = runners_available()
IN_RUN, AT_EXIT = [], ["flow.drain-in-run"]
#: How long past the flow's timeout_seconds the drain may end (a drain step, the
#: cancel calls and the loaded 2-core machine).
SLACK = 5.0


@pytest.fixture
def api_logging():
    """Logging to the API on for this test and the flows it runs in its threads."""
    from prefect.settings import PREFECT_LOGGING_TO_API_ENABLED, temporary_settings

    with temporary_settings(updates={PREFECT_LOGGING_TO_API_ENABLED: True}):
        yield


@pytest.fixture
def release(tmp_path):
    yield tmp_path
    (tmp_path / "release").write_text("")


def background(fn, *args, **kwargs) -> "concurrent.futures.Future":
    """``fn`` on a thread of its own, in this thread's context (settings, API logging)."""
    done: concurrent.futures.Future = concurrent.futures.Future()
    context = contextvars.copy_context()

    def run():
        try:
            done.set_result(context.run(fn, *args, **kwargs))
        except BaseException as exc:  # handed to the test
            done.set_exception(exc)

    import threading

    threading.Thread(target=run, daemon=True).start()
    return done


def poll(check, limit: float, what: str):
    """Bounded readiness poll of something another process or thread does."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen within {limit}s")


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def flow_run(flow_run_id):
    with client() as c:
        return c.read_flow_run(uuid.UUID(str(flow_run_id)))


def task_runs(flow_run_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with client() as c:
        return c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(str(flow_run_id))])))


def api_logs(flow_run_id, containing: str, limit: float = 60) -> list:
    """The flow run's log messages in the API, once one contains ``containing``."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def logs():
        from prefect.client.orchestration import get_client

        # the async client: the sync one has no read_logs before prefect 3.1
        async with get_client() as c:
            return await c.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[uuid.UUID(str(flow_run_id))])))

    def read():
        messages = [log.message for log in asyncio.run(logs())]
        return messages if any(containing in m for m in messages) else None

    return poll(read, limit, f"a log line containing {containing!r} in flow run {flow_run_id}")


def the_flow_run_id(directory: Path) -> str:
    return poll(lambda: (directory / "flow_run_id").exists() and (directory / "flow_run_id").read_text(), 120, "flow run id")


@pytest.mark.parametrize("disable", [IN_RUN, AT_EXIT], ids=["in-run", "at-exit"])
@pytest.mark.parametrize("kind", RUNNERS)
def test_the_drains_lines_are_in_the_flow_runs_logs(kind, disable, make_runner, shim, release, records, api_logging):
    """Item 1: the waiting and cancelled lines reach the flow run's logs in the API,
    whichever path drains.  Stock control: the stock run logs neither, and loses the run."""
    stock = release / "stock"
    stock.mkdir()
    state = flows.run_dropping_blockers(make_runner(kind), str(stock))
    stock_id = the_flow_run_id(stock)
    (stock / "release").write_text("")
    assert state.is_completed()

    shim(disable=disable, drain_timeout=3)
    state = flows.run_dropping_blockers(make_runner(kind), str(release))
    shim_id = the_flow_run_id(release)
    messages = api_logs(shim_id, "cancelled 1 task run(s)")
    waiting = [m for m in messages if "waiting up to 3s for 1 unresolved task run(s)" in m]
    cancelled = [m for m in messages if "cancelled 1 task run(s) still unresolved after drain_timeout=3s" in m]
    assert len(waiting) == 1 and len(cancelled) == 1, messages
    assert "cancel the flow run to stop waiting" in waiting[0] if disable == IN_RUN else "Cancel cannot stop" in waiting[0]
    assert state.is_completed()
    blocker_run = next(r for r in task_runs(shim_id) if r.name.startswith("blocker"))
    assert str(blocker_run.id) in cancelled[0]
    assert poll(lambda: (r := flow_run_task_state(blocker_run.id)) is not None and r.is_cancelled(), 60, "blocker Cancelled")

    stock_messages = api_logs(stock_id, "", limit=30)
    assert not [m for m in stock_messages if "prefect-future-anchor" in m]


def flow_run_task_state(task_run_id):
    with client() as c:
        return c.read_task_run(task_run_id).state


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_subflows_drain_is_in_the_subflows_logs(kind, make_runner, shim, tmp_path, api_logging):
    """Item 1: a subflow with its own runner: its lines go to its own run, not the parent's.
    Stock control: the stock subflow logs nothing of the kind."""
    stock = tmp_path / "stock"
    stock.mkdir()
    _parent, stock_child = flows.run_parent_of_dropping_child(make_runner(kind), str(stock))
    assert not [m for m in api_logs(stock_child, "", limit=30) if "prefect-future-anchor" in m]
    shim()
    parent_id, child_id = flows.run_parent_of_dropping_child(make_runner(kind), str(tmp_path))
    assert len(list(tmp_path.glob("*.done"))) == 3
    child = api_logs(child_id, "waiting up to")
    assert len([m for m in child if "waiting up to" in m and "3 unresolved task run(s)" in m]) == 1
    parent = api_logs(parent_id, "", limit=30)
    assert not [m for m in parent if "prefect-future-anchor" in m]


def cancelled_at_the_timeout(run_flow, kind, disable, make_runner, shim, release, records):
    """Run ``run_flow`` (two blockers dropped) with ``timeout_seconds=T`` and the shim
    (``disable``): the one line naming the 2 runs cancelled came within T (with
    :data:`SLACK`) of the run's start.  T leaves the flow's body time to see its runs
    start (new Ray workers, a loaded machine).  Returns the flow's final state, the
    flow run's id and that line's record."""
    timeout = {"dask": 10, "ray": 30}[kind]
    shim(disable=disable)
    state = run_flow(make_runner(kind), str(release), n=2, timeout_seconds=timeout)
    flow_run_id = the_flow_run_id(release)
    line = [r for r in records.records if "cancelled 2 task run(s)" in r.getMessage()]
    assert len(line) == 1, records.messages()
    started = flow_run(flow_run_id).start_time.timestamp()
    assert line[0].created - started <= timeout + SLACK
    return state, flow_run_id, line


@pytest.mark.parametrize("disable", [IN_RUN, AT_EXIT], ids=["in-run", "at-exit"])
@pytest.mark.parametrize("kind", RUNNERS)
def test_the_drain_ends_at_the_flows_timeout(kind, disable, make_runner, shim, release, records, api_logging):
    """Item 2: ``timeout_seconds=T`` bounds the drain: at T the runs still waited for are
    cancelled, reported Cancelled and named in the flow run's logs.  Inside the run the
    flow ends TimedOut (it did not finish within T); at the exit it is Completed already."""
    state, flow_run_id, line = cancelled_at_the_timeout(
        flows.run_dropping_blockers, kind, disable, make_runner, shim, release, records
    )
    if disable == IN_RUN:
        assert state.name == "TimedOut", state
        assert "at the flow's timeout_seconds" in line[0].getMessage() or "interrupted" in line[0].getMessage()
    else:
        assert state.is_completed()
        assert "still unresolved at the flow's timeout_seconds" in line[0].getMessage()
    api_logs(flow_run_id, "cancelled 2 task run(s)")
    blockers = [r for r in task_runs(flow_run_id) if r.name.startswith("blocker")]
    assert len(blockers) == 2
    for run in blockers:
        assert poll(lambda: flow_run_task_state(run.id).is_cancelled(), 60, "blocker Cancelled")


# An exception in the drain's thread (it once found its result future cancelled by the
# timeout, and the flow's exit then waited again for the same runs) fails the test.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("disable", [IN_RUN, AT_EXIT], ids=["in-run", "at-exit"])
@pytest.mark.parametrize("kind", RUNNERS)
def test_an_async_flows_drain_ends_at_its_timeout(kind, disable, make_runner, shim, release, records, api_logging):
    """Item 2 for an async flow (the drain inside the run waits on a thread of its own,
    so Prefect's timeout can interrupt it): at ``timeout_seconds`` the runs still
    waited for are cancelled and named in the flow run's logs in the API, and the flow
    ends TimedOut.  Control: with the drain at the runner's exit (``flow.drain-in-run``
    off) the run is Completed before the drain starts."""
    state, flow_run_id, line = cancelled_at_the_timeout(
        flows.run_dropping_blockers_async, kind, disable, make_runner, shim, release, records
    )
    blockers = [r for r in task_runs(flow_run_id) if r.name.startswith("blocker")]
    assert len(blockers) == 2
    if disable == IN_RUN:
        assert state.name == "TimedOut", state
        assert flow_run(flow_run_id).state.name == "TimedOut"
        logged = [m for m in api_logs(flow_run_id, "cancelled 2 task run(s)") if "cancelled 2 task run(s)" in m]
        assert len(logged) == 1 and all(str(run.id) in logged[0] for run in blockers), logged
    else:
        assert state.is_completed()
        assert "still unresolved at the flow's timeout_seconds" in line[0].getMessage()
    for run in blockers:
        assert poll(lambda: flow_run_task_state(run.id).is_cancelled(), 60, "blocker Cancelled")


@pytest.mark.parametrize("kind", RUNNERS)
def test_the_flow_run_is_running_while_the_drain_waits_and_cancel_stops_it(kind, make_runner, shim, release, records, api_logging):
    """Item 3: inside the run, the API shows it Running while the drain waits; a Cancel
    of the flow run (as the UI sends it) cancels the run waited for, reports it
    Cancelled and ends the flow run Cancelled, within a few seconds."""
    from prefect.states import Cancelling

    shim()
    running = background(flows.run_dropping_blockers, make_runner(kind), str(release))
    flow_run_id = the_flow_run_id(release)
    poll(lambda: records.messages(logging.INFO, "waiting up to"), 120, "the drain's waiting line")
    assert flow_run(flow_run_id).state.is_running()
    asked = time.monotonic()
    with client() as c:
        c.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling())
    state = running.result(timeout=120)
    took = time.monotonic() - asked
    assert state.is_cancelled(), state
    assert took < 15, took
    blocker_run = next(r for r in task_runs(flow_run_id) if r.name.startswith("blocker"))
    assert poll(lambda: flow_run_task_state(blocker_run.id).is_cancelled(), 60, "blocker Cancelled")
    assert flow_run(flow_run_id).state.is_cancelled()
    messages = api_logs(flow_run_id, "when the flow run was cancelled in the API")
    assert [m for m in messages if "cancelled 1 task run(s)" in m and str(blocker_run.id) in m]


@pytest.mark.parametrize("kind", RUNNERS[:1])
def test_control_at_the_exit_the_run_is_completed_and_cancel_cannot_stop_it(kind, make_runner, shim, release, records, api_logging):
    """The control of the test above: with ``flow.drain-in-run`` off the drain happens
    at the runner's exit, when the API already shows the run Completed; a Cancel
    there changes nothing, and the drain goes on until its run ends."""
    from prefect.states import Cancelling

    shim(disable=AT_EXIT)
    running = background(flows.run_dropping_blockers, make_runner(kind), str(release))
    flow_run_id = the_flow_run_id(release)
    poll(lambda: records.messages(logging.INFO, "waiting up to"), 120, "the drain's waiting line")
    assert flow_run(flow_run_id).state.is_completed()
    with client() as c:
        c.set_flow_run_state(uuid.UUID(flow_run_id), Cancelling())
    assert flow_run(flow_run_id).state.is_completed()
    with pytest.raises(concurrent.futures.TimeoutError):
        running.result(timeout=5)  # still draining: the cancel did not reach it
    (release / "release").write_text("")
    assert running.result(timeout=120).is_completed()
    assert records.messages(containing="cancelled 1 task run(s)") == []
