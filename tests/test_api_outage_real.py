"""The API unreachable: the Prefect server killed in the middle of a flow.

Real parts: a Prefect server of this module's own (``prefect_future_anchor.server``,
stopped by its handle and started again on the same port and database), a
``dask scheduler`` + ``dask worker`` pair reporting to it (``allowed-failures=0``).
Two runs are in flight when the server goes down; then their worker dies.  The
flow's API settings point at this server (a settings context); Prefect's client
retries are off for the flow (stock's own calls fail fast, as the shim's do).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, List

import pytest

from conftest import dask_processes_at, runners_available
from fault_tasks import DriverSide, blocks, dies_when
from prefect import flow
from prefect_future_anchor import outcomes
from prefect_future_anchor.server import free_port, prefect_server

class Server:
    """A Prefect server that can be killed and started again at the same address."""

    def __init__(self, home: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self._stack: Any = None

    def start(self) -> None:
        stack = contextlib.ExitStack()
        stack.enter_context(prefect_server(startup_timeout=180, home=self.home, port=self.port))
        self._stack = stack

    def kill(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    @property
    def up(self) -> bool:
        return self._stack is not None


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    if "dask" not in runners_available():
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    server = Server(str(tmp_path_factory.mktemp("outage-home")))
    server.start()
    try:
        with dask_processes_at(
            tmp_path_factory.mktemp("outage-dask"),
            workers=1,
            nthreads=3,
            env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0", "PREFECT_API_URL": server.url},
        ) as (address, _pids):
            yield server, address
    finally:
        server.kill()


def api(server: Server):
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    return temporary_settings(updates={PREFECT_API_URL: server.url, PREFECT_CLIENT_MAX_RETRIES: 0})


def api_state(server: Server, task_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with api(server), get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id).state


def wait_running(server: Server, task_run_id: Any, limit: float = 180) -> None:
    """Readiness poll of the server: the run's engine has reported Running."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            state = api_state(server, task_run_id)
            if state is not None and state.is_running():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise AssertionError(f"task run {task_run_id} never showed Running in the API")


def reporter_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prefect-future-anchor")]


def run_through_outage(server: Server, address: str, tmp_path, back_before_exit: bool):
    """Two runs in flight, the server killed, then their worker killed; the server
    started again before the flow returns, or after.  Returns the two futures, the
    seconds the flow took, and what it raised."""
    from prefect_dask import DaskTaskRunner

    trigger = tmp_path / f"die-{time.monotonic_ns()}"
    release = tmp_path / f"release-{time.monotonic_ns()}"
    kept: List[Any] = []
    # the flow function travels to the workers with each run: what it shares with
    # this process stays here
    here = DriverSide(server=server, kept=kept, trigger=trigger, release=str(release), back=back_before_exit)

    def outage_flow():
        here.kept.append(blocks.submit(here.release))
        here.kept.append(dies_when.submit(str(here.trigger)))
        for future in here.kept:
            wait_running(here.server, future.task_run_id)
        here.server.kill()
        here.trigger.touch()
        for future in here.kept:
            future.wait()
        if here.back:
            here.server.start()

    raised = None
    started = time.monotonic()
    try:
        with api(server):
            flow(outage_flow, name="api-outage", task_runner=DaskTaskRunner(address=address))()
    except Exception as exc:
        raised = type(exc)
    seconds = time.monotonic() - started
    release.touch()
    if not server.up:
        server.start()
    return kept, seconds, raised


def test_api_outage(outage, shim, records, tmp_path):
    """Killed with runs in flight, their worker then dead.  Stock: the flow returns,
    and its runs stay Running in the API for good, the server back or not.  The
    shim, the server still down at exit: the first refused connection gives the
    reports up (the flow returns at most 5 s after stock's, not after the 30 s
    bound), one line names the runs left unreported, no thread is left.  The
    server back before the exit: the reports land."""
    server, address = outage
    (slow, doomed), stock_seconds, stock_raised = run_through_outage(server, address, tmp_path, False)
    for future in (slow, doomed):
        assert api_state(server, future.task_run_id).is_running()  # stock: zombies, the server back

    shim()
    records.records.clear()
    (slow, doomed), seconds, raised = run_through_outage(server, address, tmp_path, False)
    assert raised == stock_raised
    lines = records.messages(containing="could not be told")
    assert len(lines) == 1, lines
    assert str(slow.task_run_id) in lines[0] and str(doomed.task_run_id) in lines[0]
    for future in (slow, doomed):
        assert api_state(server, future.task_run_id).is_running()  # nothing reported: as the API last had it
    # A refused connection is known at once: at most 5 s more than stock (the margin is for a loaded machine).
    assert seconds < stock_seconds + 5 + 10, (stock_seconds, seconds)
    print(f"API down at exit: the flow took {seconds:.1f} s, stock {stock_seconds:.1f} s")
    deadline = time.monotonic() + outcomes.CALL_TIMEOUT + 30
    while reporter_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not reporter_threads()

    records.records.clear()
    (slow, doomed), _seconds, raised = run_through_outage(server, address, tmp_path, True)
    assert raised is None
    for future in (slow, doomed):
        state = api_state(server, future.task_run_id)
        assert state.is_crashed() and "KilledWorker" in state.message, state
    assert not records.messages(containing="could not be told")
