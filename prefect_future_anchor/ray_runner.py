"""prefect-ray: ``RayTaskRunner`` / ``PrefectRayFuture``.

``RayTaskRunner.submit`` unwraps upstream ``PrefectRayFuture`` objects in
``parameters`` with ``_exchange_prefect_for_ray_futures`` and pickles
``wait_for`` into the remote call; the driver's wrappers are dropped and warn
on prefect-ray 0.4.0-0.4.4.  0.4.4's ``__del__`` also warns for finished runs,
and 0.4.0-0.4.3's fetches the finished run's whole result to find out.

Completion is learnt by :class:`Watcher` with ``ray.wait(fetch_local=False)``:
``ObjectRef._on_completed`` would fetch and deserialize every run's State
(result included) into the driver, which stock prefect-ray never does for a
result nobody asks for.
"""

from __future__ import annotations

import inspect
import sys
import threading
from typing import Any, Callable, Dict, List, Optional

import wrapt

from . import guard, ray_errors
from .integration import RunnerIntegration

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


class RayIntegration(RunnerIntegration):
    name = "ray"
    distribution = "prefect-ray"
    module_name = "prefect_ray.task_runners"
    runner_name = "RayTaskRunner"
    future_name = "PrefectRayFuture"

    def __init__(self) -> None:
        super().__init__()
        self.watcher = Watcher()

    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        self.watcher.watch(raw, callback)

    def cancel(self, raw: Any) -> None:
        _ray().cancel(raw, force=True)

    worker_word = "worker or node"

    def failure(self, raw: Any) -> Optional[BaseException]:
        # Runs on the watcher thread (paused before ray.shutdown()), never on Ray's own.
        error = ray_errors.failure(raw)
        if error is None or ray_errors.cancelled(error):
            return None
        return error

    def _exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """Stop the watcher before ``ray.shutdown()`` and make no Ray call while it runs."""

        def stock_exit(*a: Any, **k: Any) -> Any:
            left = self.watcher.pause()
            _shutting_down.set()
            try:
                for callback in left:  # runs of other runners: Ray is going away under them
                    callback()
                return wrapped(*a, **k)
            finally:
                _shutting_down.clear()
                self.watcher.resume()

        return super()._exit_wrapper(stock_exit, instance, args, kwargs)

    def shape_problem(self, patch: str) -> Any:
        problem = super().shape_problem(patch)
        if problem is not None:
            return problem
        if patch == "ray.track":
            try:
                import ray  # the runner module has imported it already

                wait_parameters = inspect.signature(ray.wait).parameters
            except Exception as exc:
                return f"ray.wait cannot be inspected ({exc})"
            if "fetch_local" not in wait_parameters:
                return "ray.wait has no fetch_local parameter (completion would fetch results)"
        if patch == "ray.final-states":
            return ray_errors.shape_problem()
        if patch == "ray.ready-del":
            if not callable(self.future_class().__dict__.get("__del__")):
                return "PrefectRayFuture.__del__ is not defined on the class"
        return None

    def patch_extra(self, patch: str, future: type) -> None:
        if patch != "ray.ready-del":
            super().patch_extra(patch, future)
        self._remember(future, "__del__")
        wrapt.wrap_function_wrapper(future, "__del__", _silent_when_ready)


def ready(raw: Any) -> bool:
    """Whether the ObjectRef's value exists, without fetching it."""
    done, _pending = _ray().wait([raw], timeout=0, fetch_local=False)
    return bool(done)


def _silent_when_ready(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    try:
        ray = sys.modules.get("ray")
        if _shutting_down.is_set() or ray is None or not ray.is_initialized():
            # Any Ray call now would hit a core worker being destroyed, or (stock
            # ray.get) auto-initialise a new Ray from a finaliser: say nothing.
            return None
        if instance._final_state is None and ready(instance._wrapped_future):
            return None
    except Exception as exc:
        guard.failed("ray.ready-del", exc)
    return wrapped(*args, **kwargs)


_shutting_down = threading.Event()

integration = RayIntegration()
