"""No zombie runs: every run the shim holds ends in a final state in the API.

Real parts: the session's Prefect server, a ``dask scheduler`` + ``dask worker``
process pair started here (``allowed-failures=0``: the scheduler gives up on a
task after one worker death), the session's Ray head.  Each test runs the stock
control first, in the same test, and reads states back through the Prefect
client.  A task run's own engine reports its states; these tests make the
engine unable to (its worker killed, its run cancelled, the flow gone).
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any, List

import httpx
import pytest

from conftest import dask_processes_at, runners_available
from fault_tasks import blocks, child, dies_once_running, parent
from prefect import flow

RUNNERS = runners_available()


@pytest.fixture(scope="module")
def dask_pair(tmp_path_factory):
    if "dask" not in RUNNERS:
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    with dask_processes_at(
        tmp_path_factory.mktemp("dask-pair"),
        workers=1,
        nthreads=4,
        env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"},
    ) as (address, _pids):
        yield address


@pytest.fixture
def release(tmp_path):
    """A path the ``blocks`` tasks wait for; created when the test ends."""
    path = tmp_path / "release"
    yield str(path)
    path.touch()


def api_state(task_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id).state


def wait_running(task_run_id: Any, limit: float = 60) -> None:
    """Readiness poll of the server: the run's engine has reported Running."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            state = api_state(task_run_id)
            if state is not None and state.is_running():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"task run {task_run_id} never showed Running in the API")


_RUN_CALL = re.compile(r"/task_runs/[0-9a-f-]{36}(/set_state)?$")


class ApiCalls:
    """Counts this process's HTTP requests that read or set one task run's state."""

    def __init__(self, monkeypatch) -> None:
        self.count = 0
        for cls in (httpx.Client, httpx.AsyncClient):
            original = cls.send

            if cls is httpx.Client:

                def send(client, request, *a, _original=original, **k):
                    self._see(request)
                    return _original(client, request, *a, **k)

            else:

                async def send(client, request, *a, _original=original, **k):
                    self._see(request)
                    return await _original(client, request, *a, **k)

            monkeypatch.setattr(cls, "send", send)

    def _see(self, request) -> None:
        if _RUN_CALL.search(request.url.path):
            self.count += 1


def dask_runner(address: str):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


@pytest.fixture
def runner_of(request):
    """``runner_of(kind)``: Dask on the scheduler/worker pair, Ray on the session's head."""

    def make(kind: str):
        if kind == "dask":
            return dask_runner(request.getfixturevalue("dask_pair"))
        return request.getfixturevalue("make_runner")("ray")

    return make


def no_retries(kind: str):
    """Ray retries a task whose worker died (3 times by default): once is enough here."""
    if kind == "ray":
        from prefect_ray.context import remote_options

        return remote_options(max_retries=0)
    import contextlib

    return contextlib.nullcontext()


CAUSE = {"dask": "KilledWorker", "ray": "WorkerCrashedError"}


# -- a worker that dies ----------------------------------------------------------------


def run_worker_death(runner, kind: str = "dask") -> List[Any]:
    kept: List[Any] = []

    def worker_dies():
        with no_retries(kind):
            doomed = dies_once_running.submit()
        kept.append(doomed)
        doomed.wait()
        # submitted after the death, so they cannot die with that worker
        fine = child.submit(parent.submit(1))
        kept.append(fine)
        fine.wait()

    flow(worker_dies, name="worker-dies", task_runner=runner)()
    return kept


@pytest.mark.parametrize("kind", RUNNERS)
def test_worker_death_ends_crashed_and_costs_no_call_for_normal_runs(kind, runner_of, shim, monkeypatch):
    calls = ApiCalls(monkeypatch)
    doomed, fine = run_worker_death(runner_of(kind), kind)
    stock_calls = calls.count
    # stock: the zombie
    assert api_state(doomed.task_run_id).is_running()
    assert api_state(fine.task_run_id).is_completed()

    report = shim()
    assert report.patch(f"{kind}.final-states").state == "applied"
    calls.count = 0
    doomed, fine = run_worker_death(runner_of(kind), kind)
    # one read and one proposal for the crashed run; nothing for the two that ended normally
    assert calls.count - stock_calls == 2
    state = api_state(doomed.task_run_id)
    assert state.is_crashed(), state
    assert CAUSE[kind] in state.message and "died" in state.message
    assert doomed.state.is_crashed()
    with pytest.raises(Exception, match="(?i)worker"):
        doomed.result()
    assert fine.result() == 2
    assert api_state(fine.task_run_id).is_completed()


def test_a_final_state_the_engine_reported_is_never_overwritten(dask_pair, shim):
    """The race with a late engine report: the engine's Completed lands after the
    shim read the run as Running, before its proposal; the server keeps Completed
    and the future reports it."""
    from prefect.client.orchestration import get_client

    from prefect_future_anchor import outcomes

    shim()
    _doomed, fine = run_worker_death(dask_runner(dask_pair))
    assert fine.result() == 2
    completed = api_state(fine.task_run_id)

    class LateEngineReport:
        """The real client, except that its first read returns what the API
        said before the engine's final report."""

        def __init__(self, client):
            self.client = client

        def read_task_run(self, task_run_id):
            run = self.client.read_task_run(task_run_id)
            from prefect.states import Running

            return run.model_copy(update={"state": Running()})

        def __getattr__(self, name):
            return getattr(self.client, name)

    local = outcomes.crashed_state("worker died", RuntimeError("worker died"))
    with get_client(sync_client=True) as client:
        kept = outcomes.settle(LateEngineReport(client), fine.task_run_id, local)
        assert kept.is_completed() and kept.id == completed.id
        assert outcomes.settle(client, fine.task_run_id, local).is_completed()
    assert api_state(fine.task_run_id).id == completed.id


# -- runs the shim cancels at exit -----------------------------------------------------


def run_left_running(runner, path: str, how: str = "return", timeout: Any = None) -> List[Any]:
    kept: List[Any] = []

    def leaves_a_run():
        slow = blocks.submit(path)
        kept.append(slow)
        wait_running(slow.task_run_id)
        if how == "raises":
            raise RuntimeError("the flow fails on purpose")
        if how == "interrupted":
            raise KeyboardInterrupt
        if how == "times out":
            slow.wait()

    test_flow = flow(leaves_a_run, name=f"leaves-a-run-{how.replace(' ', '-')}", task_runner=runner, timeout_seconds=timeout)
    if how == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            test_flow()
    else:
        test_flow(return_state=True)
    return kept


@pytest.mark.parametrize(
    "options, reason",
    [({"on_exit": "cancel"}, "on_exit='cancel'"), ({"on_exit": "wait", "drain_timeout": 1}, "drain_timeout=1s")],
    ids=["on_exit=cancel", "drain-timeout"],
)
@pytest.mark.parametrize("kind", RUNNERS)
def test_runs_cancelled_at_exit_end_cancelled(kind, runner_of, shim, release, options, reason):
    (slow,) = run_left_running(runner_of(kind), release)
    # stock: left Running (Dask: the worker still runs it; Ray: the job's worker is gone).
    # A Ray worker killed at ray.shutdown() sometimes gets its engine's own Crashed report
    # out ("aborted by Python system exit call"): a truthful end, but never Cancelled.
    stock = api_state(slow.task_run_id)
    assert stock.is_running() or (kind == "ray" and stock.is_crashed()), stock

    shim(**options)
    (slow,) = run_left_running(runner_of(kind), release)
    state = api_state(slow.task_run_id)
    assert state.is_cancelled(), state
    assert reason in state.message
    assert slow.state.is_cancelled()


@pytest.mark.parametrize(
    "how, timeout, ended",
    [("raises", None, "ended Failed"), ("times out", 4, "ended TimedOut"), ("interrupted", None, "interrupted (KeyboardInterrupt)")],
)
def test_exceptional_exit_cancels_at_once(dask_pair, shim, release, records, how, timeout, ended):
    """A flow that fails, times out or is interrupted gives control back no later
    than stock (the default on_exit='wait' does not wait then), and its unresolved
    run ends Cancelled, named in one log line."""
    started = time.monotonic()
    (slow,) = run_left_running(dask_runner(dask_pair), release, how, timeout)
    stock_seconds = time.monotonic() - started
    assert api_state(slow.task_run_id).is_running()  # stock: left Running

    shim()
    records.records.clear()
    started = time.monotonic()
    (slow,) = run_left_running(dask_runner(dask_pair), release, how, timeout)
    shim_seconds = time.monotonic() - started
    state = api_state(slow.task_run_id)
    assert state.is_cancelled(), state
    assert ended in state.message
    lines = records.messages(containing="prefect-future-anchor: cancelled")
    assert len(lines) == 1 and str(slow.task_run_id) in lines[0] and ended in lines[0]
    # The run blocks for up to 120 s: waiting for it would take that long.  The margin
    # is for a few API calls and a loaded machine, not for the run.
    assert shim_seconds < max(2 * stock_seconds, stock_seconds + 20), (stock_seconds, shim_seconds)


# -- a flow process told to stop (Prefect's termination signal) ------------------------

SIGTERMED_FLOW = """
import sys, time
from prefect import flow
from prefect_dask import DaskTaskRunner
from fault_tasks import blocks

@flow(name="stopped-by-sigterm", task_runner=DaskTaskRunner(address=sys.argv[1]))
def stopped():
    slow = blocks.submit(sys.argv[2])
    print(slow.task_run_id, flush=True)
    slow.wait()

stopped()
"""


def run_sigtermed(address: str, path: str, tmp_path, shimmed: bool):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sigtermed.py"
    script.write_text(SIGTERMED_FLOW)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent))
    env.pop("PREFECT_FUTURE_ANCHOR", None)
    if shimmed:
        env["PREFECT_FUTURE_ANCHOR"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(script), address, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        start_new_session=True,
    )
    try:
        line = ""
        while proc.poll() is None:
            line = proc.stdout.readline().strip()
            try:
                task_run_id = uuid.UUID(line)
                break
            except ValueError:
                continue
        else:
            raise AssertionError(f"the flow process ended before its run started: {line}")
        wait_running(task_run_id)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=180)[0]
        return task_run_id, time.monotonic() - started, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_sigterm_cancels_at_once(dask_pair, release, tmp_path):
    """Prefect's termination signal (a worker cancelling its flow run): the flow
    process ends no later than stock, and its unresolved run ends Cancelled."""
    stock_run, stock_seconds, _ = run_sigtermed(dask_pair, release, tmp_path, shimmed=False)
    assert api_state(stock_run).is_running()  # stock: left Running

    run, seconds, output = run_sigtermed(dask_pair, release, tmp_path, shimmed=True)
    state = api_state(run)
    assert state.is_cancelled(), (state, output[-3000:])
    assert "interrupted (TerminationSignal)" in state.message
    assert seconds < max(2 * stock_seconds, stock_seconds + 20), (stock_seconds, seconds)
