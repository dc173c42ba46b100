"""prefect-ray: ``RayTaskRunner`` / ``PrefectRayFuture``.

``RayTaskRunner.submit`` unwraps upstream ``PrefectRayFuture`` objects in
``parameters`` with ``_exchange_prefect_for_ray_futures`` and pickles
``wait_for`` into the remote call; the driver's wrappers are dropped and warn
on prefect-ray 0.4.0-0.4.4.  0.4.4's ``__del__`` also warns for finished runs.
"""

from __future__ import annotations

import sys
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
        if (
            instance._final_state is None
            and ray is not None
            and ray.is_initialized()
            and ready(instance._wrapped_future)
        ):
            return None
    except Exception as exc:
        guard.failed("ray.ready-del", exc)
    return wrapped(*args, **kwargs)


integration = RayIntegration()
