"""Hold every submitted run's Prefect future until that run resolves.

This one mechanism serves both corrections, and knows nothing about Dask or Ray
(each runner integration supplies "call me when this run is done"):

- the false warning (prefect-dask 0.3.0-0.3.5, prefect-ray 0.4.0-0.4.4): the
  stock ``__del__`` is silent for a run that has resolved, and a future that
  user code dropped after handing it to a dependent is now collected only once
  its own run has resolved;
- the drain: the futures still held when the runner exits are exactly the
  runs that have not resolved (``ThreadPoolTaskRunner`` waits for those).

Nothing here grows with the number of runs that have resolved: an entry is
dropped by its run's completion callback, and whatever is left when the runner
exits is let go there.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

_ATTRIBUTE = "_prefect_future_anchor_runs"

_count = threading.Condition()
_live = 0


def _add_live(delta: int) -> None:
    global _live
    with _count:
        _live += delta
        if _live == 0:
            _count.notify_all()


class Runs:
    """The unresolved runs of one task runner: task run id -> (task name, future)."""

    def __init__(self) -> None:
        self._held: Dict[Any, Tuple[str, Any]] = {}
        self._changed = threading.Condition()
        #: how many runs were ever held (so a test can tell "all released" from "never held")
        self.ever_held = 0
        #: the context of the first submit (the flow run's settings, client and
        #: logger) and the flow run the engine updates: set by the integration
        self.context: Optional[contextvars.Context] = None
        self.flow_run: Any = None
        #: runs the shim cancelled: their end is a cancellation, not a crash
        self.cancelled: set = set()
        #: runs a drain stopped waiting for (cancelled, or running on where they cannot be)
        self.given_up: set = set()
        #: the runtime of the runner that holds them, the flow run's logger and its
        #: own deadline (monotonic; from ``timeout_seconds``): set by the integration
        self.runtime: Any = None
        self.log: Any = None
        self.bound: Optional[float] = None

    def hold(self, key: Any, name: str, future: Any) -> Callable[..., None]:
        """Keep ``future`` until the returned release is called (idempotent; the
        release accepts and ignores whatever a completion callback passes)."""
        with self._changed:
            replaced = self._held.pop(key, None)
            self._held[key] = (name, future)
            self.ever_held += 1
        if replaced is None:
            _add_live(+1)

        def release(*_ignored: Any) -> None:
            self.release([key])

        return release

    def release(self, keys: Iterable[Any]) -> None:
        dropped = []
        with self._changed:
            for key in keys:
                entry = self._held.pop(key, None)
                if entry is not None:
                    dropped.append(entry)
            if dropped:
                self._changed.notify_all()
        if dropped:
            _add_live(-len(dropped))
        # The futures die here, outside every lock: a stock __del__ may log or call Ray.
        del dropped

    def release_all(self) -> None:
        with self._changed:
            keys = list(self._held)
        self.release(keys)

    def get(self, key: Any) -> Optional[Tuple[str, Any]]:
        """``(name, future)`` of a held run, or None."""
        with self._changed:
            return self._held.get(key)

    def pending(self) -> List[Tuple[Any, str, Any]]:
        with self._changed:
            return [(key, name, future) for key, (name, future) in self._held.items()]

    def wait_released(self, keys: Iterable[Any], timeout: float) -> bool:
        """Block until none of ``keys`` is held (their runs resolved); False on timeout.

        Waits on the completion callbacks, so nothing is fetched: the stock
        ``future.wait()`` would pull each run's result into this process.
        """
        wanted = list(keys)
        with self._changed:
            return self._changed.wait_for(lambda: not any(key in self._held for key in wanted), timeout=timeout)

    def __len__(self) -> int:
        with self._changed:
            return len(self._held)


def runs_of(runner: Any) -> Runs:
    """The :class:`Runs` of a runner instance, created on first use."""
    found = held_by(runner)
    if found is None:
        found = runner.__dict__.setdefault(_ATTRIBUTE, Runs())
    return found


def held_by(runner: Any) -> Optional[Runs]:
    """The :class:`Runs` of a runner instance, or None if it never held a run."""
    return runner.__dict__.get(_ATTRIBUTE)


def live_anchors() -> int:
    """How many submitted runs the shim still holds, over all runners (0 once all resolved)."""
    with _count:
        return _live


def wait_released(timeout: float) -> bool:
    """Block until every held run has resolved or been let go; False if ``timeout`` passed first."""
    with _count:
        return _count.wait_for(lambda: _live == 0, timeout=timeout)
