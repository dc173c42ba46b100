"""Runs submitted and not kept must not vanish when the flow ends.

``ThreadPoolTaskRunner`` waits for every submitted run when it exits; the stock
Dask and Ray runners close the client / shut Ray down with the runs still
pending, so a fire-and-forget ``task.submit()`` is silently lost (every
release up to prefect 3.9.1).  The runner integration records each run in the
runner's :class:`Inflight` until it resolves and calls :func:`drain` at exit.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Callable, Dict, List, Tuple

logger = logging.getLogger("prefect_future_anchor")

ON_EXIT_MODES = ("wait", "cancel", "ignore")
DEFAULT_DRAIN_TIMEOUT = 3600.0

_ATTRIBUTE = "_prefect_future_anchor_inflight"


class Inflight:
    """The runs of one runner that have not resolved yet (forgotten as they resolve)."""

    def __init__(self) -> None:
        self._runs: Dict[Any, List[Any]] = {}
        self._lock = threading.Lock()

    def add(self, key: Any, name: str, future: Any) -> None:
        with self._lock:
            self._runs[key] = [name, future, None]

    def attach(self, key: Any, release: Any) -> None:
        """Remember the run's anchor release (if the run has not resolved already)."""
        with self._lock:
            entry = self._runs.get(key)
            if entry is not None:
                entry[2] = release

    def discard(self, key: Any) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def pending(self) -> List[Tuple[str, Any]]:
        with self._lock:
            return [(name, future) for name, future, _release in self._runs.values()]

    def give_up(self, futures: List[Any]) -> None:
        """Release the anchors of runs that were cancelled and forget them now:
        their completion callbacks may never fire once Ray is shut down."""
        wanted = {id(future) for future in futures}
        with self._lock:
            entries = [(k, e) for k, e in self._runs.items() if id(e[1]) in wanted]
            for key, _entry in entries:
                del self._runs[key]
        for _key, (_name, _future, release) in entries:
            if release is not None:
                release()

    def __len__(self) -> int:
        with self._lock:
            return len(self._runs)


def inflight_of(runner: Any) -> Inflight:
    """The :class:`Inflight` of a runner instance, created on first use."""
    found = runner.__dict__.get(_ATTRIBUTE)
    if found is None:
        found = runner.__dict__.setdefault(_ATTRIBUTE, Inflight())
    return found


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


def _names(runs: List[Tuple[str, Any]]) -> str:
    return ", ".join(f"{name} ({getattr(future, 'task_run_id', '?')})" for name, future in runs)


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
    is_done: Callable[[Any], bool],
    cancel: Callable[[Any], None],
) -> None:
    """Resolve, or cancel and name, the runner's unresolved runs (at runner exit)."""
    if mode == "ignore":
        return
    inflight = runner.__dict__.get(_ATTRIBUTE)
    if inflight is None:
        return
    runs = [(name, fut) for name, fut in inflight.pending() if not is_done(fut.wrapped_future)]
    if not runs:
        return
    log = _logger_for(runner)
    if mode == "wait":
        log.info(
            "prefect-future-anchor: waiting up to %gs for %d unresolved task run(s) "
            "before the task runner shuts down: %s",
            timeout,
            len(runs),
            _names(runs),
        )
        deadline = time.monotonic() + timeout
        for _name, future in runs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            future.wait(timeout=remaining)
        runs = [(name, fut) for name, fut in runs if not is_done(fut.wrapped_future)]
        if not runs:
            return
        reason = f"still unresolved after drain_timeout={timeout:g}s"
    else:
        reason = "unresolved at task runner exit (on_exit='cancel')"
    for _name, future in runs:
        cancel(future.wrapped_future)
    inflight.give_up([future for _name, future in runs])
    log.warning(
        "prefect-future-anchor: cancelled %d task run(s) %s: %s",
        len(runs),
        reason,
        _names(runs),
    )
