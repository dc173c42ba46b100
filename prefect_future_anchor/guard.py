"""The shim must never break a flow: its own failures are logged once and swallowed."""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("prefect_future_anchor")

_reported: set = set()
_warned: set = set()
_lock = threading.Lock()


def failed(where: str, exc: BaseException) -> None:
    """Record that the shim's own code failed at ``where``; log the first time only.

    The caller then carries on exactly as stock Prefect would.
    """
    with _lock:
        first = where not in _reported
        _reported.add(where)
    if first:
        logger.error(
            "prefect-future-anchor: internal error in %s; continuing with stock "
            "Prefect behaviour for this call (further errors here are not logged)",
            where,
            exc_info=(type(exc), exc, exc.__traceback__),
        )


def failures() -> frozenset:
    """Where the shim's own code has failed so far in this process."""
    with _lock:
        return frozenset(_reported)


def warn_once(key: str, message: str, *args) -> None:
    """Log ``message`` at WARNING the first time ``key`` is seen in this process."""
    with _lock:
        first = key not in _warned
        _warned.add(key)
    if first:
        logger.warning(message, *args)
