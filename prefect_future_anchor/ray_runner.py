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
from .ray_watch import Watcher
from .integration import RunnerIntegration

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
