"""No zombie runs: every run the shim holds ends in a final state in the API.

Real parts: the session's Prefect server, a ``dask scheduler`` + ``dask worker``
process pair started here (``allowed-failures=0``: the scheduler gives up on a
task after one worker death), the session's Ray head.  Each test runs the stock
control first, in the same test, and reads states back through the Prefect
client.  A task run's own engine reports its states; these tests make the
engine unable to (its worker killed, its run cancelled, the flow gone).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from typing import Any, List

import httpx
import pytest

from api_proxy import ApiProxy
from conftest import dask_processes_at, runners_available
from fault_tasks import DriverSide, blocks, child, dies_once_running, dies_when, parent
from prefect import flow
from prefect_future_anchor import outcomes

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


def wait_running(task_run_id: Any, limit: float = 180) -> None:
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


_RUN_CALL = re.compile(r"/task_runs/([0-9a-f-]{36})(/set_state)?$")


class ApiCalls:
    """This process's HTTP requests that read or set task runs' states, by run (a
    read of several runs by id counts once for each)."""

    def __init__(self, monkeypatch) -> None:
        self.runs: List[str] = []
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
        match = _RUN_CALL.search(request.url.path)
        if match:
            self.runs.append(match.group(1))
        elif request.url.path.endswith("/task_runs/filter"):
            wanted = ((json.loads(request.content or b"{}").get("task_runs") or {}).get("id") or {}).get("any_")
            self.runs.extend(wanted or [])

    def of(self, *futures) -> int:
        ids = {str(f.task_run_id) for f in futures}
        return sum(run in ids for run in self.runs)


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
    """Stock leaves the run Running in the API (the future's own Crashed, on Ray,
    and ``result()`` raising hold on stock too: only the API tells the two apart)."""
    calls = ApiCalls(monkeypatch)
    doomed, fine = run_worker_death(runner_of(kind), kind)
    stock_calls = len(calls.runs)
    assert api_state(doomed.task_run_id).is_running()  # stock: the zombie
    assert api_poll(fine.task_run_id, lambda s: s is not None and s.is_final()).is_completed()

    report = shim()
    assert report.patch(f"{kind}.final-states").state == "applied"
    calls.runs.clear()
    doomed, fine = run_worker_death(runner_of(kind), kind)
    doomed_calls, other_calls = calls.of(doomed), len(calls.runs) - calls.of(doomed)
    state = api_state(doomed.task_run_id)
    assert state.is_crashed(), state
    assert CAUSE[kind] in state.message and "died" in state.message
    if kind == "dask":  # prefect-ray's wait() gives the future a Crashed of its own (stock)
        assert doomed.state.id == state.id  # the future reports what the API says
    # the crashed run's reads; none for the two that ended normally
    assert doomed_calls > 0 and other_calls == stock_calls
    assert fine.result() == 2
    if kind == "dask":  # the thread that ran the crashed run's callback does not outlive its work
        deadline = time.monotonic() + 30
        while shim_threads("prefect-future-anchor-dask") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not shim_threads("prefect-future-anchor-dask")


def shim_threads(prefix: str) -> List[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


class HeldReports:
    """Holds back the real state events a task engine of this process emits (its
    ``emit_event``), for the test to send later through the same path: an engine
    report that reaches the recorder late.  Only the events' timing changes."""

    def __init__(self, monkeypatch, names) -> None:
        import prefect.utilities.engine as engine

        self._emit = engine.emit_event
        self.names = set(names)
        self.held: List[Any] = []

        def emit_event(*args, **kwargs):
            if kwargs.get("event", "").rsplit(".", 1)[-1] in self.names:
                self.held.append(kwargs)
                return None
            return self._emit(*args, **kwargs)

        monkeypatch.setattr(engine, "emit_event", emit_event)

    def of(self, task_run_id: Any, name: str) -> Any:
        return next(k for k in self.held if k["resource"]["prefect.resource.id"].endswith(str(task_run_id)) and k["event"].endswith(name))

    def send(self, task_run_id: Any, *names: str) -> List[Any]:
        """Send the held events of one run (``names``: those only), as its engine would have."""
        sent = [k for k in self.held if k["resource"]["prefect.resource.id"].endswith(str(task_run_id))]
        sent = [k for k in sent if not names or k["event"].rsplit(".", 1)[-1] in names]
        for kwargs in sent:
            self.held.remove(kwargs)
            self._emit(**kwargs)
        return [k["id"] for k in sent]


def in_process_runs(n: int) -> List[Any]:
    """``n`` runs of ``parent`` that end Completed, run by engines of this process."""
    from prefect.task_runners import ThreadPoolTaskRunner

    kept: List[Any] = []

    def runs():
        for i in range(n):
            kept.append(parent.submit(i))
        for future in kept:
            future.wait()

    flow(runs, name="in-process-runs", task_runner=ThreadPoolTaskRunner())()
    return kept


def api_poll(task_run_id: Any, until, limit: float = 60) -> Any:
    """Readiness poll of the server: the run's API state once ``until(state)`` holds."""
    deadline = time.monotonic() + limit
    state = None
    while time.monotonic() < deadline:
        try:
            state = api_state(task_run_id)
        except Exception:
            state = None
        if until(state):
            return state
        time.sleep(0.1)
    raise AssertionError(f"task run {task_run_id}: the API state stayed {state}")


def recorded(task_run_id: Any, state_id: Any, limit: float = 60) -> List[Any]:
    """Poll until the recorder has stored ``state_id`` in the run's history
    (it stores every reported state there, newer than the run's or not)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            states = client.read_task_run_states(task_run_id)
        if any(s.id == state_id for s in states):
            return states
        time.sleep(0.1)
    raise AssertionError(f"the recorder never stored state {state_id} of task run {task_run_id}")


def test_an_engine_report_recorded_after_the_shims_still_wins(monkeypatch):
    """The engine reported Completed before the shim's report, and the recorder
    stores it after: the engine's state is the run's.  Control, same test: a
    report the old way (``set_task_run_state``, timestamped by the server) makes
    the recorder discard the engine's later-recorded Completed."""
    from prefect.client.orchestration import get_client

    held = HeldReports(monkeypatch, ["Completed"])
    ours, old_way = in_process_runs(2)
    for future in (ours, old_way):
        assert future.result() is not None  # the engines did complete them
        api_poll(future.task_run_id, lambda s: s is not None and s.is_running())

    local = outcomes.crashed_state("worker died", RuntimeError("worker died"))
    with get_client(sync_client=True) as client:
        reported = outcomes.settle(client, ours.task_run_id, local)
        client.set_task_run_state(old_way.task_run_id, outcomes.crashed_state("worker died", None), force=False)
    assert reported.is_crashed() and api_state(ours.task_run_id).id == reported.id

    (engine_ours,) = held.send(ours.task_run_id)
    (engine_old,) = held.send(old_way.task_run_id)
    state = api_poll(ours.task_run_id, lambda s: s is not None and s.id == engine_ours)
    assert state.is_completed()
    recorded(old_way.task_run_id, engine_old)
    assert api_state(old_way.task_run_id).is_crashed()  # the old way: the engine's report discarded


def test_an_engine_report_recorded_between_the_shims_read_and_its_report_wins(monkeypatch):
    """The shim read Running; the engine's Completed is recorded next; the shim's
    report (sent after) is older and discarded: the run and the future's
    outcome are the engine's."""
    from prefect.client.orchestration import get_client

    held = HeldReports(monkeypatch, ["Completed"])
    (run,) = in_process_runs(1)
    api_poll(run.task_run_id, lambda s: s is not None and s.is_running())
    report = outcomes.Report(run.task_run_id, "parent", None, outcomes.crashed_state("worker died", None))
    with get_client(sync_client=True) as client:
        report.step(client, time.monotonic())
        assert report.outgoing is not None and report.outcome is None  # it read Running
        (engine,) = held.send(run.task_run_id)
        api_poll(run.task_run_id, lambda s: s is not None and s.id == engine)
        outcomes._send([report.outgoing], 30)
        recorded(run.task_run_id, report.proposal.id)
        report.step(client, time.monotonic())
    assert report.outcome[0] == outcomes.ENGINE and report.outcome[1].id == engine
    assert api_state(run.task_run_id).id == engine


def test_a_run_not_recorded_yet_is_looked_for_again(monkeypatch):
    """A 404 may mean "not recorded yet": the engine's reports of a run whose
    worker died reach the recorder after the shim's first read.  The shim reads
    again and reports it Crashed.  Control, same test: a second run, its first
    reports as late and nobody reading again, stays Running (what a report that
    gave up at the first 404 left)."""
    from prefect.client.orchestration import get_client

    held = HeldReports(monkeypatch, ["Pending", "Running", "Completed"])
    ours, control = in_process_runs(2)
    statuses: List[Any] = []
    original = httpx.Client.send

    def send(client, request, *a, **k):
        response = original(client, request, *a, **k)
        if request.url.path.endswith(str(ours.task_run_id)):
            statuses.append(response.status_code)
        return response

    monkeypatch.setattr(httpx.Client, "send", send)
    result: List[Any] = []
    local = outcomes.crashed_state("worker died", RuntimeError("worker died"))

    def settle():
        with get_client(sync_client=True) as client:
            result.append(outcomes.settle(client, ours.task_run_id, local))

    settling = threading.Thread(target=settle)
    settling.start()
    deadline = time.monotonic() + 60
    while 404 not in statuses and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 404 in statuses  # the shim read the run before the recorder had it
    held.send(ours.task_run_id, "Pending", "Running")  # its Completed died with the worker
    held.send(control.task_run_id, "Pending", "Running")
    settling.join(120)
    assert result and result[0] is not None and result[0].is_crashed(), result
    assert api_state(ours.task_run_id).is_crashed()
    api_poll(control.task_run_id, lambda s: s is not None and s.is_running())


# -- the reporter thread ------------------------------------------------------------


class Outcome:
    """Stands for a run's future: what the reporter gives it."""

    _final_state = None


class Hangs(outcomes.Report):
    """A report whose API call does not return until the test says so (an API
    that accepts the connection and never answers)."""

    def __init__(self) -> None:
        super().__init__(uuid.uuid4(), "hangs", Outcome(), None)
        self.entered, self.gate = threading.Event(), threading.Event()

    def observe(self, run, now, landed_at=0.0):
        self.entered.set()
        self.gate.wait(120)
        self.outcome = ("unrecorded", None)


class Raises(outcomes.Report):
    def __init__(self, exc: BaseException) -> None:
        super().__init__(uuid.uuid4(), "raises", Outcome(), None)
        self.exc = exc

    def observe(self, run, now, landed_at=0.0):
        raise self.exc


class Ends(outcomes.Report):
    def __init__(self) -> None:
        super().__init__(uuid.uuid4(), "ends", Outcome(), "its state")

    def observe(self, run, now, landed_at=0.0):
        self.outcome = ("reported", self.local)


def test_the_exit_waits_only_for_the_reporter_thread(monkeypatch, records):
    """The exit's bound is hard: it returns, naming the run, while the reporter's
    API call is still under way; the thread ends once the call returns."""
    reporter = outcomes.Reporter()
    monkeypatch.setattr(outcomes, "reporter", reporter)
    hangs = Hangs()
    reporter.submit(hangs)
    assert hangs.entered.wait(60)
    assert outcomes.settle_at_exit([], "", timeout=0.5) == [hangs.key]
    assert not hangs.gate.is_set()  # returned while the call was still under way
    (line,) = records.messages(containing="could not be told")
    assert str(hangs.key) in line
    hangs.gate.set()
    deadline = time.monotonic() + 60
    while reporter._thread is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert reporter._thread is None and reporter.pending() == []


@pytest.mark.parametrize("exc", [RuntimeError("a bug of the shim's"), SystemExit(3), KeyboardInterrupt()], ids=type)
def test_the_reporter_thread_survives_what_a_report_raises(exc):
    from prefect_future_anchor import guard

    reporter = outcomes.Reporter()
    reporter.submit(Raises(exc))
    assert reporter.flush(60)
    ends = Ends()
    reporter.submit(ends)
    assert reporter.flush(60) and ends.future._final_state == "its state"
    assert "final-state reports" in guard.failures()


# -- runners that share a process -------------------------------------------------------


def two_runners(dask_pair, runner_a, proxy: ApiProxy, tmp_path, shimmed: bool) -> Any:
    """Flow B (in a thread, its API through ``proxy``) loses a run with its Dask
    worker while the proxy holds B's requests; flow A (this thread, the API direct)
    then runs and exits; then the proxy lets B's requests through.  Returns B's
    lost future once B's run is Crashed in the API (shimmed) or B's flow has
    ended (stock)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    trigger = tmp_path / f"die-{time.monotonic_ns()}"
    here = DriverSide(kept=[], died=threading.Event(), finish=threading.Event(), trigger=str(trigger))

    def b_loses_a_run():
        here.kept.append(dies_when.submit(here.trigger))
        here.kept[0].wait()
        here.died.set()
        here.finish.wait(180)

    def in_b():
        with temporary_settings(updates={PREFECT_API_URL: proxy.url}):
            flow(b_loses_a_run, name="b-loses-a-run", task_runner=dask_runner(dask_pair))()

    def a_runs_and_exits():
        return parent.submit(1).result()

    b = threading.Thread(target=in_b)
    b.start()
    try:
        deadline = time.monotonic() + 180
        while not here.kept and time.monotonic() < deadline:
            time.sleep(0.05)
        (lost,) = here.kept
        wait_running(lost.task_run_id)
        proxy.hold()
        trigger.touch()
        assert here.died.wait(120)
        if shimmed:  # readiness: the crash report is queued (and held by the proxy)
            deadline = time.monotonic() + 60
            while lost.task_run_id not in dict(outcomes.reporter.pending()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert lost.task_run_id in dict(outcomes.reporter.pending())
        assert flow(a_runs_and_exits, name="a-runs-and-exits", task_runner=runner_a)() == 1
        proxy.release()
        if shimmed:
            api_poll(lost.task_run_id, lambda s: s is not None and s.is_crashed())
    finally:
        proxy.release()
        here.finish.set()
        b.join(240)
    return lost


def test_an_exit_waits_for_its_own_runs_reports_only(dask_pair, make_runner, shim, records, monkeypatch, tmp_path):
    """Two runners in one process, the API slow for B: B's worker dies, then A's
    runner exits.  A's exit neither waits for B's crash report nor gives it up
    (before, it cut B's deadline to its own and named B's run in A's log); B's run
    ends Crashed.  Stock control: B's run stays Running."""
    from prefect.settings import PREFECT_API_URL

    monkeypatch.setattr(outcomes, "REPORT_TIMEOUT", 5.0)
    with ApiProxy(PREFECT_API_URL.value()) as proxy:
        lost = two_runners(dask_pair, make_runner("dask"), proxy, tmp_path, shimmed=False)
        assert api_state(lost.task_run_id).is_running()  # stock: the zombie

        shim()
        records.records.clear()
        lost = two_runners(dask_pair, make_runner("dask"), proxy, tmp_path, shimmed=True)
    assert api_state(lost.task_run_id).is_crashed()
    assert not records.messages(containing="could not be told")


# -- the API refusing or slow at exit ----------------------------------------------------


def exit_with_api(dask_pair, proxy: ApiProxy, tmp_path, outage: str, back_before_exit: bool = False) -> Any:
    """A flow whose one run reports through ``proxy`` (the flow's own calls go to the
    API direct): ``outage`` ("refuse" or "hold") starts, the run's worker dies,
    the proxy listens again before the flow ends if ``back_before_exit``.  Returns
    the lost future and the seconds from the flow body's end to the flow's return
    (the flow run's completion, then the runner's exit)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    trigger = tmp_path / f"die-{time.monotonic_ns()}"
    here = DriverSide(kept=[], ended=[], proxy=proxy, outage=outage, back=back_before_exit, trigger=trigger)

    def loses_a_run():
        with temporary_settings(updates={PREFECT_API_URL: here.proxy.url}):
            here.kept.append(dies_when.submit(str(here.trigger)))
        wait_running(here.kept[0].task_run_id)
        getattr(here.proxy, here.outage)()
        here.trigger.touch()
        here.kept[0].wait()
        if here.back:
            here.proxy.listen()
        here.ended.append(time.monotonic())

    try:
        flow(loses_a_run, name=f"api-{outage}s-at-exit", task_runner=dask_runner(dask_pair))()
        return here.kept[0], time.monotonic() - here.ended[0]
    finally:
        proxy.release()
        proxy.listen()


def test_an_api_that_refuses_costs_the_exit_seconds_not_the_bound(dask_pair, shim, records, tmp_path):
    """Nothing listens at the API's address when the runner exits: the first refused
    connection gives the report up (before, it was tried again every ~2.6 s until
    the 30 s bound), one line names the run.  An API back before the exit gets the
    report (Crashed).  Stock control: the run stays Running, the exit waits for nothing."""
    from prefect.settings import PREFECT_API_URL

    with ApiProxy(PREFECT_API_URL.value()) as proxy:
        lost, stock_seconds = exit_with_api(dask_pair, proxy, tmp_path, "refuse")
        assert api_state(lost.task_run_id).is_running()  # stock: the zombie

        shim()
        records.records.clear()
        lost, seconds = exit_with_api(dask_pair, proxy, tmp_path, "refuse")
        (line,) = records.messages(containing="could not be told")
        assert str(lost.task_run_id) in line
        assert api_state(lost.task_run_id).is_running()  # nothing reported: as the API last had it
        # at most 5 s more than stock's exit (slack for a loaded machine; the bound is 30 s)
        assert seconds - stock_seconds < 5 + 10, (stock_seconds, seconds)
        print(f"API refusing at exit: the exit took {seconds:.2f} s, stock {stock_seconds:.2f} s")

        records.records.clear()
        lost, _seconds = exit_with_api(dask_pair, proxy, tmp_path, "refuse", back_before_exit=True)
        assert api_state(lost.task_run_id).is_crashed()
        assert not records.messages(containing="could not be told")


def test_a_slow_api_keeps_the_exit_within_the_bound(dask_pair, shim, records, monkeypatch, tmp_path):
    """The API accepts connections and does not answer: the exit waits for the report
    up to the bound (the shim's REPORT_TIMEOUT, made short here), not less (a slow
    API is not a refusing one) and not more, and names the run.  Stock control: the
    exit waits for nothing."""
    from prefect.settings import PREFECT_API_URL

    bound = 8.0
    monkeypatch.setattr(outcomes, "REPORT_TIMEOUT", bound)
    with ApiProxy(PREFECT_API_URL.value()) as proxy:
        lost, stock_seconds = exit_with_api(dask_pair, proxy, tmp_path, "hold")
        shim()
        records.records.clear()
        lost, seconds = exit_with_api(dask_pair, proxy, tmp_path, "hold")
    (line,) = records.messages(containing="could not be told")
    assert str(lost.task_run_id) in line and f"within {bound:g}s" in line
    assert bound - 1 < seconds < stock_seconds + bound + 20, (stock_seconds, seconds)
    print(f"API holding at exit, bound {bound:g} s: the exit took {seconds:.2f} s, stock {stock_seconds:.2f} s")


# -- runs the shim cancels at exit -----------------------------------------------------


def run_left_running(runner, path: str, how: str = "return", timeout: Any = None) -> List[Any]:
    kept: List[Any] = []

    running: List[bool] = []

    def leaves_a_run():
        slow = blocks.submit(path)
        kept.append(slow)
        wait_running(slow.task_run_id)
        running.append(True)
        if how == "raises":
            raise RuntimeError("the flow fails on purpose")
        if how == "interrupted":
            raise KeyboardInterrupt
        if how == "times out":
            slow.wait()
        if how == "times out polling":
            # A flow that polls in Python while its timeout comes: nothing of Ray's runs
            # on this thread when prefect's timeout exception arrives (see test_exits_real).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                time.sleep(0.2)
            raise RuntimeError("the flow's timeout never came")

    test_flow = flow(leaves_a_run, name=f"leaves-a-run-{how.replace(' ', '-')}", task_runner=runner, timeout_seconds=timeout)
    if how == "interrupted":
        with pytest.raises(KeyboardInterrupt):
            test_flow()
    else:
        test_flow(return_state=True)
    # The tests' precondition: the run was Running when the flow ended (a timeout that
    # comes while a loaded machine still starts the run's worker tests something else).
    assert running, f"the flow ({how}, timeout={timeout}) ended before its run showed Running"
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
    """A flow that fails, times out or is interrupted does not wait for its
    unresolved run (the default on_exit='wait' does not apply then): the run,
    which blocks until the test ends, ends Cancelled, named in one log line.
    (How long the exit takes beside stock: benchmarks.)"""
    (slow,) = run_left_running(dask_runner(dask_pair), release, how, timeout)
    assert api_state(slow.task_run_id).is_running()  # stock: left Running

    shim()
    records.records.clear()
    (slow,) = run_left_running(dask_runner(dask_pair), release, how, timeout)
    state = api_state(slow.task_run_id)
    assert state.is_cancelled(), state
    assert ended in state.message
    lines = records.messages(containing="prefect-future-anchor: cancelled")
    assert len(lines) == 1 and str(slow.task_run_id) in lines[0] and ended in lines[0]


# -- a flow process told to stop (Prefect's termination signal) ------------------------

SIGTERMED_FLOW = """
import sys
from prefect import flow
from {module} import {runner}
from fault_tasks import blocks

@flow(name="stopped-by-sigterm", task_runner={runner}(address=sys.argv[1]))
def stopped():
    slow = blocks.submit(sys.argv[2])
    print(slow.task_run_id, flush=True)
    slow.wait()

stopped()
"""

RUNNER_CLASSES = {"dask": ("prefect_dask", "DaskTaskRunner"), "ray": ("prefect_ray", "RayTaskRunner")}


def run_sigtermed(kind: str, address: str, path: str, tmp_path, shimmed: bool):
    """A flow process on ``kind``'s runner at ``address`` whose one run blocks on
    ``path``: SIGTERM once the run shows Running; returns (task run id, output)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    module, runner = RUNNER_CLASSES[kind]
    script = tmp_path / f"sigtermed_{kind}.py"
    script.write_text(SIGTERMED_FLOW.format(module=module, runner=runner))
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
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=240)[0]
        return task_run_id, output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def test_sigterm_cancels_at_once(dask_pair, release, tmp_path):
    """Prefect's termination signal (a worker cancelling its flow run): the flow
    process does not wait for its unresolved run, which ends Cancelled."""
    stock_run, _ = run_sigtermed("dask", dask_pair, release, tmp_path, shimmed=False)
    assert api_state(stock_run).is_running()  # stock: left Running

    run, output = run_sigtermed("dask", dask_pair, release, tmp_path, shimmed=True)
    state = api_state(run)
    assert state.is_cancelled(), (state, output[-3000:])
    assert "interrupted (TerminationSignal)" in state.message
