"""Keep a dependent's parent futures alive until the dependent's run resolves.

This module knows nothing about Dask or Ray.  A runner integration supplies two
facts: which futures a child depends on (captured while the stock ``submit``
swaps them for raw futures, see :func:`recording_property`) and a way to be
called back when the child's underlying run is done (``when_done``).

Nothing here grows with the number of submitted runs: an anchor is a closure
owned by the child run's completion callback, dropped when it fires.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional

from . import guard

_tls = threading.local()
_released = threading.Condition()
_live = 0


def begin_capture() -> Optional[Dict[int, Any]]:
    """Start collecting the futures the stock conversion unwraps on this thread.

    Returns the enclosing capture (normally None) to hand back to :func:`end_capture`.
    """
    previous = getattr(_tls, "capture", None)
    _tls.capture = {}
    return previous


def end_capture(previous: Optional[Dict[int, Any]]) -> Dict[int, Any]:
    captured = getattr(_tls, "capture", None) or {}
    _tls.capture = previous
    return captured


def recording_property(original: property) -> property:
    """A copy of a future class's ``wrapped_future`` property that also notes the
    future in the current capture.

    The stock ``submit`` of both runners unwraps each upstream Prefect future by
    reading ``future.wrapped_future`` inside its own ``visit_collection`` walk, so
    noting those reads finds exactly the futures Prefect swapped, at every depth
    Prefect walks, without a walk of our own.
    """
    getter = original.fget

    def wrapped_future(self):
        capture = getattr(_tls, "capture", None)
        if capture is not None:
            capture[id(self)] = self
        return getter(self)

    wrapped_future.__doc__ = getter.__doc__
    return property(wrapped_future, original.fset, original.fdel, original.__doc__)


def add_waited(captured: Dict[int, Any], wait_for: Any, future_type: type) -> None:
    """Add the futures of ``wait_for`` (a flat collection, as Prefect passes it)."""
    if isinstance(wait_for, (list, tuple, set, frozenset)):
        for item in wait_for:
            if isinstance(item, future_type):
                captured[id(item)] = item


class _Anchor:
    """One child's hold on its parents; calling it (the child resolved) lets go.

    If the completion callback is discarded without being called (a closed
    client drops its pending callbacks), collecting the anchor counts it down.
    """

    __slots__ = ("parents", "also", "__weakref__")

    def __init__(self, parents: List[Any], also: Optional[Callable[[], None]]) -> None:
        self.parents = parents
        self.also = also
        _count(+1)

    def __call__(self, *_ignored: Any) -> None:
        parents, also = self.parents, self.also
        if parents is None:
            return
        self.parents = self.also = None
        _count(-1)
        del parents
        if also is not None:
            try:
                also()
            except Exception as exc:  # pragma: no cover - defensive
                guard.failed("anchor.release", exc)

    def __del__(self) -> None:
        if self.parents is not None:
            self.parents = self.also = None
            _count(-1)


def _count(delta: int) -> None:
    global _live
    with _released:
        _live += delta
        if _live == 0:
            _released.notify_all()


def hold(
    parents: Iterable[Any],
    when_done: Callable[[Callable[..., None]], None],
    also: Optional[Callable[[], None]] = None,
) -> Optional[Callable[[], None]]:
    """Keep ``parents`` referenced until ``when_done`` calls back, then drop them.

    ``also`` runs at the same moment (the drain uses it to forget the run).
    Returns the release (idempotent), or None if nothing was held.
    """
    held = list(parents)
    if not held and also is None:
        return None
    release = _Anchor(held, also)
    try:
        when_done(release)
    except BaseException:
        release()
        raise
    return release


def live_anchors() -> int:
    """How many submitted runs still hold anchors or are tracked (0 once all resolved)."""
    with _released:
        return _live


def wait_released(timeout: float) -> bool:
    """Block until every anchor has been released; False if ``timeout`` passed first."""
    with _released:
        return _released.wait_for(lambda: _live == 0, timeout=timeout)


class Handoff:
    """Run callables on one daemon thread of our own.

    Ray calls completion callbacks on an internal C++ thread, where neither Ray
    calls nor ``__del__`` work (which dropping a future triggers) belong.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: "queue.SimpleQueue[Callable[[], None]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._thread = threading.Thread(
                        target=self._run, name=self._name, daemon=True
                    )
                    self._thread.start()
        self._queue.put(fn)

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far has run (False on timeout)."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done.set)
        return done.wait(timeout)

    def _run(self) -> None:
        while True:
            fn = self._queue.get()
            try:
                fn()
            except Exception as exc:  # pragma: no cover - defensive
                guard.failed(f"{self._name}", exc)
            del fn
