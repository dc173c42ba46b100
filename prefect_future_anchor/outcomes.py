"""Final states the engine cannot report itself.

A Prefect 3 task run reports its own states from the process that runs it.
When that process dies (a Dask worker killed, a Ray worker crashed, a node
lost), nothing reports again: stock Prefect leaves the run RUNNING in the API
for good, the flow's future says RUNNING too, and the flow ends Completed
(every release up to prefect 3.9.1; PrefectHQ/prefect#21638, #12968).  A run
the shim cancels at runner exit would likewise stay Pending or Running.

The shim learns of both from what it already has: the completion callback of
every run it holds (Dask: the future's status is ``error``; Ray: the ready
ObjectRef holds a Ray error), and the runs :mod:`prefect_future_anchor.drain`
cancels.  For those runs only (a run that ends normally costs no API call) it
reads the run's state from the API and, unless the engine already reported a
final one, proposes Crashed or Cancelled.  The proposal goes through the
server's orchestration (``force=False``), so an engine report that lands
between the read and the proposal wins: the run keeps the state its engine
reported and the flow's future reports that.  The future the flow holds is
given the same final state, so ``future.state`` and ``future.result()`` say
what the API says.
"""

from __future__ import annotations

import collections
import contextvars
import logging
import threading
import time
from typing import Any, Callable, Deque, Iterable, List, Optional, Tuple

from . import guard

logger = logging.getLogger("prefect_future_anchor")

#: Longest the runner's exit waits for crash reports still being made, and for
#: the Cancelled proposals of the runs it cancelled (the API normally answers
#: each in milliseconds; an unreachable API must not hold the flow).
REPORT_TIMEOUT = 30.0


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


def settle(client: Any, task_run_id: Any, local: Any) -> Any:
    """Make the API's state of ``task_run_id`` final: keep a final state the
    engine reported, else propose ``local`` (orchestrated).  Returns the state
    the run's future should report, or None if the API has no such run (it never
    started, so nothing there is left unfinished)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.states import State

    try:
        run = client.read_task_run(task_run_id)
    except ObjectNotFound:
        return None
    if run.state is not None and run.state.is_final():
        return run.state
    # The API keeps no exception object: propose the state without its data.
    proposal = State(type=local.type, name=local.name, message=local.message)
    result = client.set_task_run_state(task_run_id, proposal, force=False)
    if result.state is not None and result.state.type == local.type:
        return local
    if result.state is not None and result.state.is_final():
        return result.state  # the engine's report arrived first
    return local


def _give(future: Any, state: Any) -> None:
    if state is not None and getattr(future, "_final_state", None) is None:
        future._final_state = state


class Reporter:
    """One daemon thread that makes crash reports off Dask's and Ray's callback threads.

    It exists only while there is work: it starts with the first report and ends
    when the queue is empty.  :meth:`flush` waits for the reports queued so far.
    """

    def __init__(self) -> None:
        self._jobs: Deque[Tuple[Callable[[], None], contextvars.Context]] = collections.deque()
        self._changed = threading.Condition()
        self._busy = 0
        self._thread: Optional[threading.Thread] = None

    def submit(self, job: Callable[[], None], context: contextvars.Context) -> None:
        with self._changed:
            self._jobs.append((job, context))
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prefect-future-anchor-report", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._changed:
                if not self._jobs:
                    self._thread = None
                    return
                job, context = self._jobs.popleft()
            try:
                context.copy().run(job)
            except Exception as exc:
                guard.failed("crash report", exc)
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()

    def flush(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self._busy == 0, timeout=timeout)


reporter = Reporter()


def report_crash(key: Any, name: str, future: Any, cause: BaseException, runner: str, context: contextvars.Context) -> None:
    """Queue the crash report of one run whose worker/process died (called on a
    completion callback thread; the API calls happen on the reporter thread)."""

    def job() -> None:
        from prefect.client.orchestration import get_client

        message = f"{runner} worker died or was lost before the run could report a final state: {describe(cause)}"
        local = crashed_state(message, cause)
        with get_client(sync_client=True) as client:
            state = settle(client, key, local)
        _give(future, state if state is not None else local)
        if state is local or state is None:
            _run_logger().error(
                "prefect-future-anchor: task run %s (%s) set Crashed: %s", name, key, message
            )

    reporter.submit(job, context)


def describe(cause: BaseException) -> str:
    text = " ".join([str(cause)] + [str(note) for note in getattr(cause, "__notes__", None) or ()])
    text = text.strip().replace("\n", " ")
    if len(text) > 500:
        text = text[:497] + "..."
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def report_cancelled(runs: Iterable[Tuple[Any, str, Any]], reason: str, deadline: Optional[float] = None) -> List[Any]:
    """Propose Cancelled for runs the shim cancelled (synchronously, on the
    exiting thread, bounded by ``deadline``); return the keys left unreported."""
    runs = list(runs)
    if not runs:
        return []
    from prefect.client.orchestration import get_client

    deadline = deadline if deadline is not None else time.monotonic() + REPORT_TIMEOUT
    message = f"Cancelled by prefect-future-anchor: {reason}"
    left = [key for key, _name, _future in runs]
    with get_client(sync_client=True) as client:
        for key, _name, future in runs:
            if time.monotonic() > deadline:
                break
            local = cancelled_state(message)
            try:
                state = settle(client, key, local)
            except Exception as exc:
                guard.failed("cancel report", exc)
                break
            _give(future, state if state is not None else local)
            left.remove(key)
    return left
