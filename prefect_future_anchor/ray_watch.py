"""The Ray completion watcher: call back when ObjectRefs become ready, fetching nothing.

``ObjectRef._on_completed`` would fetch and deserialize each run's State (result
included) into the driver; ``ray.wait(fetch_local=False)`` learns readiness
without fetching.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable, Dict, List, Optional

from . import guard


def _ray() -> Any:
    return sys.modules["ray"]


#: How long one ``ray.wait`` of the watcher blocks before it takes in newly
#: submitted runs: the longest a run waits to be watched, and the idle cadence
#: while runs are pending (none at all when nothing is pending).
POLL_SECONDS = 0.1


def _ray() -> Any:
    return sys.modules["ray"]


class Watcher:
    """One daemon thread that calls back when ObjectRefs become ready, fetching nothing.

    It sleeps on a condition while nothing is pending; otherwise each round is
    one ``ray.wait(pending, num_returns=1, timeout=POLL_SECONDS,
    fetch_local=False)`` and, when something is ready, one non-blocking sweep
    of the rest.  Callbacks run on this thread, never on Ray's own threads.
    :meth:`pause` stops it before ``ray.shutdown()``: a Ray call racing the
    shutdown aborts the process.
    """

    def __init__(self) -> None:
        self._pending: Dict[Any, List[Callable[[], None]]] = {}
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._paused = 0
        self.rounds = 0  # ray.wait calls made (for the idle-cost benchmark)

    def watch(self, ref: Any, callback: Callable[[], None]) -> None:
        with self._changed:
            self._pending.setdefault(ref, []).append(callback)
            if self._thread is None and not self._paused:
                self._start()
            self._changed.notify_all()

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prefect-future-anchor-ray", daemon=True)
        self._thread.start()

    def pause(self, timeout: float = 30) -> List[Callable[[], None]]:
        """Stop the thread (it finishes its current ``ray.wait``) and hand back the
        callbacks of refs still pending: once Ray is shut down they never become ready."""
        with self._changed:
            self._paused += 1
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._changed:
            left = [cb for callbacks in self._pending.values() for cb in callbacks]
            self._pending.clear()
        return left

    def resume(self) -> None:
        with self._changed:
            self._paused -= 1
            if self._pending and self._thread is None and not self._paused:
                self._start()

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    def _run(self) -> None:
        try:
            while True:
                with self._changed:
                    while not self._pending and not self._paused:
                        self._changed.wait()
                    if self._paused:
                        return
                    refs = list(self._pending)
                ready = self._ready(refs)
                with self._changed:
                    callbacks = [cb for ref in ready for cb in self._pending.pop(ref, ())]
                for callback in callbacks:
                    try:
                        callback()
                    except Exception as exc:  # pragma: no cover - defensive
                        guard.failed("ray.watch callback", exc)
                del callbacks, ready, refs
        except Exception as exc:
            # The shim's own failure: let go of everything, as stock keeps nothing.
            guard.failed("ray.watch", exc)
            for callback in self.pause(0):
                callback()
            self.resume()
        finally:
            with self._changed:
                if self._thread is threading.current_thread():
                    self._thread = None

    def _ready(self, refs: List[Any]) -> List[Any]:
        ray = _ray()
        self.rounds += 1
        ready, rest = ray.wait(refs, num_returns=1, timeout=POLL_SECONDS, fetch_local=False)
        if ready and rest:
            more, _rest = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            ready = ready + more
        return ready
