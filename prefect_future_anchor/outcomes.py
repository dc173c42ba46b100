"""Final states the engine cannot report itself.

A Prefect 3 task run reports its own states from the process that runs it.
When that process dies (a Dask worker killed, a Ray worker crashed, a node
lost), nothing reports again: stock Prefect leaves the run RUNNING in the API
for good, the flow's future says RUNNING too, and the flow ends Completed
(every release up to prefect 3.9.1; PrefectHQ/prefect#21638, #12968).  A run
the shim cancels at runner exit would likewise stay Pending or Running.

The shim learns of both from what it already has: the completion callback of
every run it holds, and the runs :mod:`prefect_future_anchor.drain` cancels.
For those runs only (a run that ends normally costs no API call) it reports
Crashed or Cancelled the way the dead engine would have: as a task-run state
event, which the server's task-run recorder stores only if it is newer than
the state it holds.  The report is timestamped one microsecond after the
run's last recorded state, so any real report of the engine (every one is
later than that) wins whatever the order in which the two reach the recorder:
an engine report recorded after the shim's replaces it, one recorded first
makes the recorder discard the shim's.  A report is done when the API shows
it, or shows a final state of the engine's; a run the API has no record of
is looked for again for :data:`RECORD_GRACE` (the recorder stores an
engine's first reports a moment after they were sent).  The future the flow
holds is given what the API ends with, so ``future.state`` and
``future.result()`` say what the API says; a run the API could not be told
about keeps its stock state, and the runner's exit names it.

All API calls happen on one reporter thread, with the client's own retries
off (the reporter retries, within its deadline): the exit only waits for that
thread, so its bound (:data:`REPORT_TIMEOUT`) holds whatever the API does.  A
runner's exit waits for its own runs' reports only (several runners share the
process and the thread), and gives up at once on an API that refuses
connections (a server that is down is known at the first attempt; one that
answers slowly is waited for up to the bound).  Runs are read in batches of
:data:`READ_BATCH` (a node lost under thousands of runs queues thousands of
reports at once) and each round's state events go over one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from . import guard

logger = logging.getLogger("prefect_future_anchor")

#: Longest the runner's exit waits for the final states it reports (crash
#: reports still being made, the Cancelled of the runs it cancelled): the API
#: normally answers in milliseconds; an unreachable API must not hold the flow.
REPORT_TIMEOUT = 30.0

#: How long a run the API has no record of is looked for again before the shim
#: concludes it was never recorded (its engine never started, or its reports
#: died with it).
RECORD_GRACE = 5.0

#: Longest one API call of the reporter may take.
CALL_TIMEOUT = 10.0

#: Pause between reads while the recorder has not stored a report yet.
POLL = 0.2

#: Pause before trying again after the API could not be reached.
RETRY = 1.0

#: Most runs one read asks for (prefect's default page limit, PREFECT_API_DEFAULT_LIMIT).
READ_BATCH = 200

#: A report not shown by the API this long after it was sent, while no other
#: report of the reporter's has landed meanwhile, is sent again (same event id:
#: the recorder stores it once).  While reports keep landing the recorder is
#: working through its queue, and a resend would only lengthen it.
RESEND = 5.0

#: The pause after a round of reads, as a multiple of the time the reads took
#: (at least :data:`POLL`): the server's task-run recorder, which must store
#: the reports, shares the server with those reads (600 reports at once landed
#: in 19.3 s with back-to-back reads, in 14.0 s with this pause: RESULTS.md).
READ_PAUSE = 2.0
#: The longest such pause.
MAX_PAUSE = 5.0

#: What became of a report: the API holds the shim's state, an engine's final
#: state, or has no record of the run.
REPORTED, ENGINE, UNRECORDED = "reported", "engine", "unrecorded"

_TASK_RUN_FIELDS_NOT_SENT = {
    "id",
    "created",
    "updated",
    "flow_run_id",
    "state_id",
    "state_type",
    "state_name",
    "state",
    "estimated_start_time_delta",
    "estimated_run_time",
}


def _run_logger(default: Any = None) -> Any:
    try:
        from prefect.logging.loggers import get_run_logger

        return get_run_logger()
    except Exception:
        return default or logger


def crashed_state(message: str, cause: Optional[BaseException]) -> Any:
    from prefect.states import Crashed

    return Crashed(message=message, data=cause) if cause is not None else Crashed(message=message)


def cancelled_state(message: str) -> Any:
    from prefect.states import Cancelled

    return Cancelled(message=message)


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the API could not be reached or did not answer (try
    again later), as opposed to a fault of the shim's own code."""
    import httpx

    if isinstance(exc, (httpx.TransportError, OSError, TimeoutError, asyncio.TimeoutError)):
        return True
    try:
        from websockets.exceptions import WebSocketException

        if isinstance(exc, WebSocketException):
            return True
    except ImportError:  # pragma: no cover - prefect depends on websockets
        pass
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status in (408, 429))


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a refused connection: no
    server listens at the API's address, which a retry within seconds will not change."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ConnectionRefusedError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _read_runs(client: Any, keys: List[Any]) -> Dict[str, Any]:
    """The task runs of ``keys`` the API has, by id, in one read per
    :data:`READ_BATCH` (``read_task_runs`` with a filter on ids: prefect 3.0.0+)."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId
    from prefect.settings import PREFECT_API_DEFAULT_LIMIT

    batch = max(1, min(READ_BATCH, PREFECT_API_DEFAULT_LIMIT.value()))
    found: Dict[str, Any] = {}
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        wanted = TaskRunFilter(id=TaskRunFilterId(any_=chunk))
        found.update((str(run.id), run) for run in client.read_task_runs(task_run_filter=wanted, limit=len(chunk)))
    return found


def _event(run: Any, stored: Any, proposal: Any) -> Any:
    """The task-run state event an engine emits for ``proposal`` (the payload of
    ``prefect.utilities.engine.emit_task_run_state_change_event``, which the
    server's task-run recorder reads)."""
    from prefect.events import Event

    def brief(state: Any, with_data: bool) -> Dict[str, Any]:
        out = {
            "type": str(state.type.value),
            "name": state.name,
            "message": state.message,
            "state_details": state.state_details.model_dump(
                mode="json", exclude_none=True, exclude_unset=True, exclude={"flow_run_id", "task_run_id"}
            ),
        }
        if with_data:
            out["data"] = None
        return out

    related = [
        {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"} for tag in sorted(run.tags or ())
    ]
    if run.flow_run_id is not None:
        related.insert(0, {"prefect.resource.id": f"prefect.flow-run.{run.flow_run_id}", "prefect.resource.role": "flow-run"})
    return Event(
        id=proposal.id,
        occurred=proposal.timestamp,
        event=f"prefect.task-run.{proposal.name}",
        resource={
            "prefect.resource.id": f"prefect.task-run.{run.id}",
            "prefect.resource.name": run.name,
            "prefect.run-count": str(run.run_count),
            "prefect.state-message": proposal.message or "",
            "prefect.state-name": proposal.name or "",
            "prefect.state-timestamp": proposal.timestamp.isoformat(),
            "prefect.state-type": str(proposal.type.value),
            "prefect.orchestration": "client",
        },
        related=related,
        payload={
            "intended": {"from": str(stored.type.value) if stored else None, "to": str(proposal.type.value)},
            "initial_state": brief(stored, False) if stored else None,
            "validated_state": brief(proposal, True),
            "task_run": run.model_dump(mode="json", exclude_none=True, exclude=_TASK_RUN_FIELDS_NOT_SENT),
        },
    )


def _send(events: List[Any], timeout: float) -> None:
    """Send ``events`` over one events connection, within ``timeout``."""

    async def send() -> None:
        from prefect.events.clients import get_events_client

        async with get_events_client(reconnection_attempts=0) as client:
            for event in events:
                await client.emit(event)

    async def bounded() -> None:
        await asyncio.wait_for(send(), timeout)

    asyncio.run(bounded())


@contextlib.contextmanager
def _client(timeout: float = CALL_TIMEOUT) -> Any:
    """A sync client whose calls fail fast: no retries of its own, each call
    bounded (the reporter retries, within its deadline)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: 0}):
        with get_client(httpx_settings={"timeout": httpx.Timeout(timeout)}, sync_client=True) as client:
            yield client


class Report:
    """One run's final state to get into the API, one read at a time."""

    def __init__(
        self,
        key: Any,
        name: str,
        future: Any,
        local: Any,
        context: Any = None,
        deadline: Optional[float] = None,
        owner: Any = None,
    ) -> None:
        self.key = key
        self.name = name
        self.future = future
        self.local = local
        self.context = context
        self.deadline = deadline
        #: whose exit waits for this report (the runner's runs): no other runner's exit does
        self.owner = owner
        self.due = 0.0
        self.proposal: Any = None
        self.outgoing: Any = None
        self.sent_at: Optional[float] = None
        self.first_missing: Optional[float] = None
        #: (REPORTED / ENGINE / UNRECORDED, the state the future should report) once done
        self.outcome: Optional[Tuple[str, Any]] = None
        #: called with the outcome on the reporter thread (the crash report's log line)
        self.on_done: Optional[Callable[[str, Any], None]] = None

    def step(self, client: Any, now: float) -> None:
        """Read the run once, then :meth:`observe` it."""
        from prefect.exceptions import ObjectNotFound

        try:
            run = client.read_task_run(self.key)
        except ObjectNotFound:
            run = None
        self.observe(run, now)

    def observe(self, run: Any, now: float, landed_at: float = 0.0) -> None:
        """Given the run as the API has it (None: no record), finish, or decide
        what to send and when to read again (``landed_at``: when the API last
        showed another report, see :data:`RESEND`)."""
        self.due = now + POLL
        if run is None:
            self.first_missing = self.first_missing if self.first_missing is not None else now
            if now - self.first_missing >= RECORD_GRACE:
                self.outcome = (UNRECORDED, None)
            return
        self.first_missing = None
        stored = run.state
        if stored is not None and self.proposal is not None and stored.id == self.proposal.id:
            self.outcome = (REPORTED, self.proposal)
        elif stored is not None and stored.is_final():
            self.outcome = (ENGINE, stored)
        elif self.proposal is None or (stored is not None and stored.timestamp >= self.proposal.timestamp):
            # first read, or an engine report newer than ours was recorded since
            self.proposal = self._after(stored, run)
            self.outgoing = _event(run, stored, self.proposal)
        elif self.sent_at is None or now - max(self.sent_at, landed_at) >= RESEND:
            self.outgoing = _event(run, stored, self.proposal)

    def _after(self, stored: Any, run: Any) -> Any:
        """``local`` timestamped so that no real report of the engine can be older."""
        if stored is not None:
            timestamp = stored.timestamp + datetime.timedelta(microseconds=1)
        else:
            timestamp = datetime.datetime.now(datetime.timezone.utc)
        details = self.local.state_details.model_copy(update={"task_run_id": run.id, "flow_run_id": run.flow_run_id})
        return self.local.model_copy(update={"id": uuid.uuid4(), "timestamp": timestamp, "state_details": details})


def settle(client: Any, task_run_id: Any, local: Any, deadline: Optional[float] = None) -> Any:
    """Make the API's state of ``task_run_id`` final, on the calling thread:
    keep a final state the engine reported, else report ``local`` (a report of
    the engine's that reaches the recorder later still wins).  Returns the
    state the run's future should report, or None if the API has no record of
    the run (within :data:`RECORD_GRACE`); raises TimeoutError if the API did
    not show either by ``deadline`` (default :data:`REPORT_TIMEOUT` from now)."""
    deadline = deadline if deadline is not None else time.monotonic() + REPORT_TIMEOUT
    report = Report(task_run_id, "", None, local)
    while True:
        now = time.monotonic()
        report.step(client, now)
        if report.outcome is not None:
            return report.outcome[1]
        if report.outgoing is not None:
            _send([report.outgoing], max(0.1, min(CALL_TIMEOUT, deadline - now)))
            report.outgoing, report.sent_at = None, time.monotonic()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"the API did not show a final state of task run {task_run_id} in time")
        time.sleep(max(0.0, min(report.due, deadline) - time.monotonic()))


def _give(future: Any, state: Any) -> None:
    if future is not None and state is not None and getattr(future, "_final_state", None) is None:
        future._final_state = state


def _names(keys_names: Iterable[Tuple[Any, str]]) -> str:
    return ", ".join(f"{name} ({key})" for key, name in keys_names)


class Reporter:
    """One daemon thread that makes every API call of the final states.

    What it keeps true: a report is in one place at a time.  It is being made (in
    ``_reports``, by key), or given up (in ``_expired``, until its owner's exit
    takes it to name it), or done (its future given the state, its ``on_done``
    called), or dropped after an error of the shim's own (logged once).  A report
    with a deadline leaves ``_reports`` at that deadline: each API call for it is
    bounded by it, the thread never sleeps past the earliest one and gives up
    what is late, and an exit that stops waiting gives up its own late reports
    itself.  An exit touches its own owner's reports only: the reports of other
    runners in the process keep their own deadlines.

    The thread exists only while there is work.  Each round reads the runs that
    are due with one client, in batches of :data:`READ_BATCH`, and sends what
    they need over one events connection.  A run waiting for the recorder is
    read again after :data:`POLL` (later when the reads were slow), one whose
    API could not be reached after :data:`RETRY`.  Whatever happens in a round,
    the thread goes on, or is replaced at the next report.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._reports: Dict[Any, Report] = {}
        #: key -> (name, owner, whether it was sent) of reports given up, for their owner's exit to name
        self._expired: Dict[Any, Tuple[str, Any, bool]] = {}
        self._thread: Optional[threading.Thread] = None
        #: when the API last showed a report landed (see :data:`RESEND`)
        self._landed_at = 0.0

    # -- the callers' side -------------------------------------------------------
    def submit(self, report: Report) -> None:
        with self._changed:
            if report.key in self._reports:
                return  # already being reported (a crash, then the exit's cancel)
            self._reports[report.key] = report
            self._start()
            self._changed.notify_all()

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="prefect-future-anchor-report", daemon=True)
            self._thread.start()

    def pending(self) -> List[Tuple[Any, str]]:
        with self._changed:
            return [(r.key, r.name) for r in self._reports.values()]

    def wait(self, owner: Any, deadline: float) -> List[Tuple[Any, str, bool]]:
        """Give the reports of ``owner`` (a runner's runs; None: every report) until
        ``deadline`` (monotonic): what is not done by then is given up.  Waits
        only for the thread, so the bound is hard.  Returns (key, name, whether it
        was sent) of ``owner``'s reports given up (one sent may still be stored by
        the API's recorder)."""
        with self._changed:
            wanted = self._bring_forward(owner, deadline)
            self._changed.wait_for(lambda: not wanted & set(self._reports), timeout=max(0.0, deadline - time.monotonic()))
            for key in wanted:
                if key in self._reports:
                    self._give_up(self._reports[key])
            return self._take_expired(owner)

    def flush(self, timeout: float) -> bool:
        """Give every report queued so far ``timeout`` seconds (the runner's exit);
        True if all were made, else one log line names the runs given up."""
        return not _name_unreported(self.wait(None, time.monotonic() + timeout), timeout)

    @staticmethod
    def _owned_by(owner: Any, report_owner: Any) -> bool:
        return owner is None or report_owner is owner

    def _bring_forward(self, owner: Any, deadline: float) -> set:
        """(Under the lock.)  Give ``owner``'s reports ``deadline`` at the latest and
        wake the thread for them; their keys."""
        wanted = {key for key, report in self._reports.items() if self._owned_by(owner, report.owner)}
        for key in wanted:
            report = self._reports[key]
            if report.deadline is None or report.deadline > deadline:
                report.deadline = deadline
        if wanted:
            self._start()
        self._changed.notify_all()
        return wanted

    def _take_expired(self, owner: Any) -> List[Tuple[Any, str, bool]]:
        """(Under the lock.)  Hand ``owner`` its given-up reports, forgetting them."""
        mine = [(key, name, sent) for key, (name, who, sent) in self._expired.items() if self._owned_by(owner, who)]
        for key, _name, _sent in mine:
            del self._expired[key]
        return mine

    # -- the thread --------------------------------------------------------------
    def _run(self) -> None:
        try:
            while self._round():
                pass
        except BaseException as exc:
            guard.failed("final-state reports", exc)
        finally:
            with self._changed:
                if self._thread is threading.current_thread():
                    self._thread = None
                    if self._reports:
                        self._start()
                self._changed.notify_all()

    def _round(self) -> bool:
        """One round over the due reports; False when there is nothing left."""
        with self._changed:
            now = time.monotonic()
            self._give_up_late(now)
            if not self._reports:
                return False
            due = [r for r in self._reports.values() if r.due <= now]
            if not due:
                self._sleep_until_next(now)
                return True
        for context, group in self._by_context(due):
            if context is not None:
                context.copy().run(self._serve, group)
            else:
                self._serve(group)
        return True

    def _give_up_late(self, now: float) -> None:
        """(Under the lock.)  Give up every report whose deadline has passed."""
        for report in list(self._reports.values()):
            if report.deadline is not None and now >= report.deadline:
                self._give_up(report)

    def _sleep_until_next(self, now: float) -> None:
        """(Under the lock.)  Sleep until a report is due or a deadline comes, whichever
        is first (a new report or a waiter wakes it sooner)."""
        wake = min(min(r.due, r.deadline or r.due) for r in self._reports.values())
        self._changed.wait(max(0.0, wake - now))

    @staticmethod
    def _by_context(reports: List[Report]) -> List[Tuple[Any, List[Report]]]:
        """``reports`` grouped by the flow context they are made in (its API settings)."""
        groups: Dict[int, List[Report]] = {}
        for report in reports:
            groups.setdefault(id(report.context), []).append(report)
        return [(group[0].context, group) for group in groups.values()]

    def _serve(self, group: List[Report]) -> None:
        """Read the group's runs, then send what they need over one events
        connection (in the flow's context: its API settings, its logger); finish
        the reports that are done."""
        bound = min([CALL_TIMEOUT] + [r.deadline - time.monotonic() for r in group if r.deadline is not None])
        try:
            with _client(max(0.1, bound)) as client:
                reading = sum(
                    self._observe(client, group[start:start + READ_BATCH]) for start in range(0, len(group), READ_BATCH)
                )
            self._pause_after_reads(group, reading)
            self._send_outgoing(group, bound)
        except BaseException as exc:
            for report in group:
                if report.outcome is None:
                    self._failed(report, exc)
        for report in group:
            if report.outcome is not None:
                self._finish(report)

    def _observe(self, client: Any, reports: List[Report]) -> float:
        """Read ``reports``' runs and observe them; the seconds the read took (0 if
        it failed: a read that timed out says nothing of the recorder's pace)."""
        started = time.monotonic()
        try:
            runs = _read_runs(client, [r.key for r in reports])
        except BaseException as exc:
            for report in reports:
                self._failed(report, exc)
            return 0.0
        now = time.monotonic()
        for report in reports:
            try:
                report.observe(runs.get(str(report.key)), now, self._landed_at)
            except BaseException as exc:
                self._failed(report, exc)
        if any(r.outcome is not None and r.outcome[0] != UNRECORDED for r in reports):
            self._landed_at = now
        return now - started

    @staticmethod
    def _pause_after_reads(group: List[Report], reading: float) -> None:
        """Read the group again no sooner than :data:`READ_PAUSE` times the time its
        reads took (at most :data:`MAX_PAUSE`): the recorder shares the server."""
        pause = time.monotonic() + min(READ_PAUSE * reading, MAX_PAUSE)
        for report in group:
            report.due = max(report.due, pause)

    def _send_outgoing(self, group: List[Report], bound: float) -> None:
        """Send the state events the group's unfinished reports need, in one connection."""
        outgoing = [r for r in group if r.outgoing is not None and r.outcome is None]
        if not outgoing:
            return
        try:
            _send([r.outgoing for r in outgoing], max(0.1, bound))
        except BaseException as exc:
            for report in outgoing:
                self._failed(report, exc)
            return
        sent = time.monotonic()
        for report in outgoing:
            report.outgoing, report.sent_at = None, sent

    def _failed(self, report: Report, exc: BaseException) -> None:
        """An API call for ``report`` raised: try again after :data:`RETRY` if the API
        could not be reached (give up now if it refused and an exit waits); drop
        the report on any other error (the shim's own)."""
        if _unreachable(exc):
            if report.deadline is not None and _refused(exc):
                with self._changed:  # the exit waits: the server is down, say so now
                    self._give_up(report)
                return
            report.due = time.monotonic() + RETRY
            return
        guard.failed("final-state reports", exc)
        with self._changed:
            self._drop(report)

    def _finish(self, report: Report) -> None:
        """Give the future what the API ended with, tell ``on_done``, drop the report."""
        try:
            how, state = report.outcome
            _give(report.future, state if how != UNRECORDED else report.local)
            if report.on_done is not None:
                report.on_done(how, state)
        except BaseException as exc:
            guard.failed("final-state reports", exc)
        finally:
            with self._changed:
                self._drop(report)

    def _give_up(self, report: Report) -> None:
        """(Under the lock.)  Stop reporting; its owner's exit names it."""
        if self._reports.get(report.key) is report:
            self._expired[report.key] = (report.name, report.owner, report.sent_at is not None)
            self._drop(report)

    def _drop(self, report: Report) -> None:
        if self._reports.get(report.key) is report:
            del self._reports[report.key]
            self._changed.notify_all()


reporter = Reporter()


def report_crash(
    key: Any, name: str, future: Any, cause: BaseException, runner: str, context: Any, owner: Any = None
) -> None:
    """Queue the crash report of one run whose worker/process died (called on a
    completion callback thread; never blocks it: the API calls happen on the
    reporter thread, in ``context``, the flow's); ``owner``'s exit waits for it."""
    message = f"{runner} died or was lost before the run could report a final state: {describe(cause)}"
    report = Report(key, name, future, crashed_state(message, cause), context, owner=owner)

    def on_done(how: str, _state: Any) -> None:
        if how == REPORTED:
            _run_logger().error("prefect-future-anchor: task run %s (%s) set Crashed: %s", name, key, message)
        elif how == UNRECORDED:
            _run_logger().error(
                "prefect-future-anchor: task run %s (%s) crashed (%s); the API has no record of the run, "
                "so there is nothing there to set Crashed",
                name,
                key,
                message,
            )

    report.on_done = on_done
    reporter.submit(report)


def describe(cause: BaseException) -> str:
    text = " ".join([str(cause)] + [str(note) for note in getattr(cause, "__notes__", None) or ()])
    text = text.strip().replace("\n", " ")
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def settle_at_exit(
    cancelled: Iterable[Tuple[Any, str, Any]], reason: str, timeout: Optional[float] = None, owner: Any = None
) -> List[Any]:
    """The runner exit's one call: report Cancelled for the runs it cancelled and
    finish ``owner``'s crash reports still being made (``owner``: the runner's
    runs, as given to :func:`report_crash`), all within ``timeout`` (default
    :data:`REPORT_TIMEOUT`), a hard bound: the exiting thread only waits.  Logs
    one line naming the runs whose final state the API was not told; returns
    their keys."""
    import contextvars

    started = time.monotonic()
    deadline = started + (REPORT_TIMEOUT if timeout is None else timeout)
    message = f"Cancelled by prefect-future-anchor: {reason}"
    context = contextvars.copy_context()
    for key, name, future in cancelled:
        reporter.submit(Report(key, name, future, cancelled_state(message), context, deadline, owner))
    return [key for key, _name, _sent in _name_unreported(reporter.wait(owner, deadline), deadline - started)]


def _name_unreported(left: List[Tuple[Any, str, bool]], timeout: float) -> List[Tuple[Any, str, bool]]:
    if left:
        sent = sum(1 for _key, _name, was_sent in left if was_sent)
        _run_logger().error(
            "prefect-future-anchor: the API could not be told the final state of %d task run(s) "
            "within %gs; they stay as the API last had them%s: %s",
            len(left),
            timeout,
            f" unless its recorder still stores the {sent} report(s) sent to it" if sent else "",
            _names((key, name) for key, name, _sent in left),
        )
    return left
