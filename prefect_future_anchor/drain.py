"""Runs submitted and not kept must not vanish when the flow ends.

``ThreadPoolTaskRunner`` waits for every submitted run when it exits; the stock
Dask and Ray runners close the client / shut Ray down with the runs still
pending, so a fire-and-forget ``task.submit()`` is silently lost (every
release up to prefect 3.9.1).  The runs still held by
:mod:`prefect_future_anchor.anchor` when the runner exits are the unresolved
ones: :func:`drain` waits for them, or cancels and names them.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, List, Optional, Tuple

from . import anchor

logger = logging.getLogger("prefect_future_anchor")

ON_EXIT_MODES = ("wait", "cancel", "ignore")
DEFAULT_DRAIN_TIMEOUT = 3600.0

def check_on_exit(value: Any) -> str:
    if value not in ON_EXIT_MODES:
        raise ValueError(
            f"on_exit={value!r} is not one of {', '.join(map(repr, ON_EXIT_MODES))}; "
            "use 'wait' (default: wait for unresolved runs), 'cancel' (cancel and name "
            "them) or 'ignore' (stock Prefect behaviour)"
        )
    return value


def check_drain_timeout(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not (number > 0) or math.isinf(number):
        raise ValueError(
            f"drain_timeout={value!r} is not a positive number of seconds; "
            f"use e.g. drain_timeout=600 (default {DEFAULT_DRAIN_TIMEOUT:g})"
        )
    return number


def _names(runs: List[Tuple[Any, str, Any]]) -> str:
    return ", ".join(f"{name} ({key})" for key, name, _future in runs)


def _logger_for(runner: Any) -> Any:
    """The flow run's logger when there is one (the message lands in the flow's
    logs), else the runner's own Prefect logger, else ours."""
    try:
        from prefect.logging.loggers import get_run_logger

        return get_run_logger()
    except Exception:
        return getattr(runner, "logger", None) or logger


def drain(
    runner: Any,
    mode: str,
    timeout: float,
    cancel: Callable[[Any], Optional[bool]],
    abandon: str = "",
) -> Tuple[List[Tuple[Any, str, Any]], str]:
    """Resolve, or cancel and name, the runner's unresolved runs (at runner exit).

    ``abandon`` (why the exit is not clean: the flow run failed, timed out, was
    cancelled or interrupted) cancels them at once, whatever ``mode`` says.
    Returns the runs it cancelled and why.  Waiting uses the runs' completion
    callbacks: no result is fetched into this process.
    """
    runs_held = anchor.held_by(runner)
    if runs_held is None or (mode == "ignore" and not abandon):
        return [], ""
    runs = runs_held.pending()
    if not runs:
        return [], ""
    log = _logger_for(runner)
    if abandon:
        reason = f"unresolved when {abandon}"
    elif mode == "wait":
        log.info(
            "prefect-future-anchor: waiting up to %gs for %d unresolved task run(s) "
            "before the task runner shuts down: %s",
            timeout,
            len(runs),
            _names(runs),
        )
        runs_held.wait_released([key for key, _name, _future in runs], timeout)
        still = {key for key, _name, _future in runs_held.pending()}
        runs = [run for run in runs if run[0] in still]
        if not runs:
            return [], ""
        reason = f"still unresolved after drain_timeout={timeout:g}s"
    else:
        reason = "unresolved at task runner exit (on_exit='cancel')"
    runs_held.cancelled.update(key for key, _name, _future in runs)
    # A run its runner cannot stop (a process pool's running call) runs on and its
    # engine reports its own end: it is not reported Cancelled, and a death of its
    # worker is still a crash.
    running_on = {key for key, _name, future in runs if cancel(future.wrapped_future) is False}
    runs_held.cancelled.difference_update(running_on)
    log.warning(
        "prefect-future-anchor: cancelled %d task run(s) %s: %s",
        len(runs),
        reason,
        _names(runs),
    )
    return [run for run in runs if run[0] not in running_on], reason
