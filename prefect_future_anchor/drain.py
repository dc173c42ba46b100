"""Runs submitted and not kept must not vanish when the flow ends.

``ThreadPoolTaskRunner`` waits for every submitted run when it exits; the stock
Dask and Ray runners close the client / shut Ray down with the runs still
pending, so a fire-and-forget ``task.submit()`` is silently lost (every
release up to prefect 3.9.1).  The runs still held by
:mod:`prefect_future_anchor.anchor` at the end of the flow are the unresolved
ones: :func:`drain` waits for them, or cancels and names them.

The wait is what an operator must be able to see and stop, so it is bounded
three ways at once: ``drain_timeout``, the flow's own ``timeout_seconds``
(``bound``) and, inside a running flow run, a Cancel of that run in the API
(``stop``).  It waits in steps of at most :data:`STEP` seconds, so an exception
Prefect raises into the waiting thread (its flow timeout) lands within a step,
and any ``drain_timeout`` works, however large.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

from . import anchor, guard

logger = logging.getLogger("prefect_future_anchor")

ON_EXIT_MODES = ("wait", "cancel", "ignore")
DEFAULT_DRAIN_TIMEOUT = 3600.0

#: Longest single wait on the runs' completions.
STEP = 1.0

#: How often a drain that goes on says so in the flow run's logs.
PROGRESS_EVERY = 60.0

#: How often a drain inside a running flow run reads whether the run was cancelled.
STOP_POLL = 2.0

Run = Tuple[Any, str, Any]

#: how a wait that gave runs up ended: at the flow's own deadline, or stopped (the run was cancelled)
AT_BOUND, STOPPED = "at the flow's timeout_seconds", "stopped"


def check_on_exit(value: Any) -> str:
    if value not in ON_EXIT_MODES:
        raise ValueError(
            f"on_exit={value!r} is not one of {', '.join(map(repr, ON_EXIT_MODES))}; "
            "use 'wait' (default: wait for unresolved runs), 'cancel' (cancel and name "
            "them) or 'ignore' (stock Prefect behaviour)"
        )
    return value


def check_drain_timeout(value: Any) -> float:
    """A positive number of seconds; ``inf`` waits for as long as the runs take."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number > 0):
        raise ValueError(
            f"drain_timeout={value!r} is not a positive number of seconds; "
            f"use e.g. drain_timeout=600 (default {DEFAULT_DRAIN_TIMEOUT:g}, 'inf' for no limit)"
        )
    return number


def names(runs: List[Run]) -> str:
    return ", ".join(f"{name} ({key})" for key, name, _future in runs)


@dataclass
class Outcome:
    """What a drain did: the runs it cancelled (to report Cancelled) and why; ``stopped``
    when the reason is that the flow run itself was cancelled in the API."""

    cancelled: List[Run] = field(default_factory=list)
    reason: str = ""
    stopped: bool = False
    #: the wait ended at the flow's own ``timeout_seconds``
    timed_out: bool = False


def drain(
    runner: Any,
    mode: str,
    timeout: float,
    cancel: Callable[[Any], Optional[bool]],
    abandon: str = "",
    *,
    log: Any = None,
    bound: Optional[float] = None,
    stop: Optional[Callable[[], str]] = None,
    hint: str = "",
    cancel_batch: Optional[Callable[[List[Any]], None]] = None,
) -> Outcome:
    """Resolve, or cancel and name, the runner's unresolved runs.

    ``abandon`` (why the flow did not end cleanly: it failed, timed out, was
    cancelled or interrupted) cancels them at once, whatever ``mode`` says.
    ``bound`` (monotonic) is the flow's own deadline; ``stop()`` returns why to
    stop waiting ("" to go on); ``hint`` tells the operator how to stop the
    wait.  Waiting uses the runs' completion callbacks: no result is fetched
    into this process.
    """
    runs_held = anchor.held_by(runner)
    if runs_held is None or (mode == "ignore" and not abandon):
        return Outcome()
    # a run an earlier drain of this runner gave up on (inside the flow run) is not
    # waited for or cancelled again: its end may take a while to be seen (a Ray
    # watcher's next round), or it runs on (a process pool's running call)
    runs = [run for run in runs_held.pending() if run[0] not in runs_held.given_up]
    if not runs:
        return Outcome()
    log = log or logger
    ended = ""
    if abandon:
        reason = f"unresolved when {abandon}"
    elif mode == "wait":
        reason, ended = _wait(runs_held, runs, timeout, log, bound, stop, hint)
        still = {key for key, _name, _future in runs_held.pending()}
        runs = [run for run in runs if run[0] in still]
        if not runs:
            return Outcome()
    else:
        reason = "unresolved at the end of the flow (on_exit='cancel')"
    cancelled = cancel_runs(runs_held, runs, cancel, reason, log, cancel_batch)
    return Outcome(cancelled, reason, stopped=ended == STOPPED, timed_out=ended == AT_BOUND)


def _wait(
    runs_held: anchor.Runs,
    runs: List[Run],
    timeout: float,
    log: Any,
    bound: Optional[float],
    stop: Optional[Callable[[], str]],
    hint: str,
) -> Tuple[str, bool]:
    """Wait for ``runs``; return why some are given up ("" if none is) and how the
    wait ended: :data:`AT_BOUND`, :data:`STOPPED` or ""."""
    started = time.monotonic()
    deadline, limit, ended = started + timeout, f"after drain_timeout={timeout:g}s", ""
    if bound is not None and bound < deadline:
        deadline, limit, ended = max(started, bound), AT_BOUND, AT_BOUND
    log.info(
        "prefect-future-anchor: waiting up to %gs for %d unresolved task run(s) before the task runner "
        "shuts down%s: %s",
        round(deadline - started, 1),
        len(runs),
        hint,
        names(runs),
    )
    keys = {key for key, _name, _future in runs}
    next_note = started + PROGRESS_EVERY
    while True:
        now = time.monotonic()
        if now >= deadline:
            return f"still unresolved {limit}", ended
        if runs_held.wait_released(keys, min(STEP, deadline - now)):
            return "", ""
        now = time.monotonic()
        why = stop() if stop is not None else ""
        if why:
            return why, STOPPED
        if now >= next_note:
            next_note = now + PROGRESS_EVERY
            left = sum(1 for key, _name, _future in runs_held.pending() if key in keys)
            log.info(
                "prefect-future-anchor: still waiting for %d task run(s), %gs left%s",
                left,
                round(deadline - now),
                hint,
            )


def cancel_runs(
    runs_held: anchor.Runs,
    runs: List[Run],
    cancel: Callable[[Any], Optional[bool]],
    reason: str,
    log: Any,
    cancel_batch: Optional[Callable[[List[Any]], None]] = None,
) -> List[Run]:
    """Cancel the runs, name them all, and return those to report Cancelled.

    ``cancel_batch`` (Dask: one ``client.cancel`` call) cancels all at once; if
    it raises, each run is cancelled on its own, so one failing cancel stops no
    other.  A run is marked cancelled before its cancel (its completion
    callback must not read the cancellation as a crash) and unmarked if the
    cancel raised or the runner could not stop it (a process pool's running
    call runs on and its engine reports its own end)."""
    keys = [run[0] for run in runs]
    runs_held.cancelled.update(keys)
    if cancel_batch is not None:
        try:
            cancel_batch([run[2].wrapped_future for run in runs])
        except NotImplementedError:
            pass
        except Exception as exc:
            guard.failed("batched cancel at the end of the flow", exc)
        else:
            runs_held.given_up.update(keys)
            log.warning("prefect-future-anchor: cancelled %d task run(s) %s: %s", len(runs), reason, names(runs))
            return list(runs)
    to_report, failed = [], []
    for run in runs:
        key = run[0]
        try:
            answer = cancel(run[2].wrapped_future)
        except Exception as exc:
            runs_held.given_up.add(key)
            runs_held.cancelled.discard(key)
            failed.append(run)
            guard.failed("cancel at the end of the flow", exc)
            continue
        runs_held.given_up.add(key)  # only once its cancel was made: an interruption before retries it
        if answer is False:
            runs_held.cancelled.discard(key)
        else:
            to_report.append(run)
    log.warning("prefect-future-anchor: cancelled %d task run(s) %s: %s", len(runs), reason, names(runs))
    if failed:
        log.error(
            "prefect-future-anchor: %d of them could not be cancelled (see the error above) and may run on: %s",
            len(failed),
            names(failed),
        )
    return to_report
