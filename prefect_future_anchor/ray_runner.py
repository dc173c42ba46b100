"""prefect-ray: ``RayTaskRunner`` / ``PrefectRayFuture``.

``RayTaskRunner.submit`` unwraps upstream ``PrefectRayFuture`` objects in
``parameters`` with ``_exchange_prefect_for_ray_futures`` and pickles
``wait_for`` into the remote call; the driver's wrappers are dropped and warn
on prefect-ray 0.4.0-0.4.4.  0.4.4's ``__del__`` also warns for finished runs.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Callable

import wrapt

from . import guard
from .anchor import Handoff
from .integration import RunnerIntegration


class RayIntegration(RunnerIntegration):
    name = "ray"
    distribution = "prefect-ray"
    module_name = "prefect_ray.task_runners"
    runner_name = "RayTaskRunner"
    future_name = "PrefectRayFuture"
    conversion_name = "_exchange_prefect_for_ray_futures"

    def __init__(self) -> None:
        super().__init__()
        self._handoff = Handoff("prefect-future-anchor-ray")

    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        # Ray runs this on an internal C++ thread: only hand the release over.
        # The closure keeps ``raw`` referenced until the run has completed.
        def completed(_result: Any, _raw: Any = raw) -> None:
            self._handoff.submit(callback)

        raw._on_completed(completed)

    def is_done(self, raw: Any) -> bool:
        return ready(raw)

    def _exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """Let the releases Ray already handed over run before ``ray.shutdown()``:
        a Ray call on the hand-off thread while the core worker is being destroyed
        aborts the process."""

        def stock_exit(*a: Any, **k: Any) -> Any:
            try:
                self._handoff.flush(30)
            except Exception as exc:  # pragma: no cover - defensive
                guard.failed("ray.flush", exc)
            _shutting_down.set()
            try:
                return wrapped(*a, **k)
            finally:
                _shutting_down.clear()

        return super()._exit_wrapper(stock_exit, instance, args, kwargs)

    def cancel(self, raw: Any) -> None:
        sys.modules["ray"].cancel(raw, force=True)

    # -- prefect-ray 0.4.4: __del__ warns even when the run has finished -------------
    def shape_problem(self, patch: str) -> Any:
        problem = super().shape_problem(patch)
        if problem is None and patch == "ray.ready-del":
            if not callable(self.future_class().__dict__.get("__del__")):
                return "PrefectRayFuture.__del__ is not defined on the class"
        return problem

    def patch_extra(self, patch: str, future: type) -> None:
        if patch != "ray.ready-del":
            super().patch_extra(patch, future)
        self._remember(future, "__del__")
        wrapt.wrap_function_wrapper(future, "__del__", _silent_when_ready)


def ready(raw: Any) -> bool:
    """Whether the ObjectRef's value exists, without fetching it."""
    ray = sys.modules["ray"]
    done, _pending = ray.wait([raw], timeout=0, fetch_local=False)
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
