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

import atexit
import contextlib
import inspect
import sys
import threading
from typing import Any, Callable, Iterator, List, Optional

from . import guard, ray_errors, ray_watch
from .patches import ContextOnce, FinalStates, Patch, PlainWalk, Track, code_constants, code_reads
from .ray_watch import Watcher
from .runtime import Runtime


def _ray() -> Any:
    return sys.modules["ray"]


def _client_connected() -> bool:
    """Whether this process reaches Ray through Ray Client (``ray://``)."""
    try:
        from . import ray_client

        return ray_client.connected()
    except Exception as exc:
        guard.failed("ray.client-check", exc)
        return False


class RayRuntime(Runtime):
    name = "ray"
    runner_name = "RayTaskRunner"
    worker_word = "worker or node"

    def __init__(self) -> None:
        super().__init__()
        self.watcher = Watcher()
        self._client_watcher: Optional[Watcher] = None

    def _watcher(self) -> Watcher:
        if not _client_connected():
            return self.watcher
        if self._client_watcher is None:
            from . import ray_client

            self._client_watcher = Watcher(probe=ray_client.probe)
        return self._client_watcher

    @property
    def final_states(self) -> bool:  # type: ignore[override]
        return self._final_states and client_problem() is None

    @final_states.setter
    def final_states(self, on: bool) -> None:
        self._final_states = on

    def when_done(self, raw: Any, on_done: Callable[[], None], on_lost: Callable[[], None]) -> None:
        self._watcher().watch(raw, on_done, on_lost)

    def cancel(self, raw: Any) -> None:
        _ray().cancel(raw, force=True)

    def failure(self, raw: Any) -> Optional[BaseException]:
        """The Ray error a ready ref holds, or None if it holds a value (or an error
        this node cannot see without fetching).  Under Ray Client this process has
        no core worker: the cluster-side reader's verdict is asked for instead.
        Runs on the watcher thread (paused before ray.shutdown()), never on Ray's own."""
        if _client_connected():
            from . import ray_client

            error = ray_client.failure(raw)
        else:
            error = ray_errors.read(raw)
        if error is None or ray_errors.cancelled(error):
            return None
        return error

    def _watchers(self) -> List[Watcher]:
        return [w for w in (self.watcher, self._client_watcher) if w is not None]

    @contextlib.contextmanager
    def _quiesced(self, shutting_down: bool) -> Iterator[None]:
        """The watchers stopped around a call that may take Ray down; afterwards, if
        Ray is down, the refs still watched (which can never become ready now) are
        let go at once and their runs end as stock leaves them."""
        watchers = self._watchers()
        for watcher in watchers:
            watcher.pause()
        if shutting_down:
            _shutting_down.set()
        try:
            yield
        finally:
            if shutting_down:
                _shutting_down.clear()
            try:
                self._let_go_if_down(watchers)
            finally:
                for watcher in watchers:
                    watcher.resume()

    def _let_go_if_down(self, watchers: List[Watcher]) -> None:
        try:
            ray = sys.modules.get("ray")
            if ray is None or not ray.is_initialized():
                for watcher in watchers:
                    for on_lost in watcher.abandon():
                        on_lost()
        except Exception as exc:  # pragma: no cover - defensive
            guard.failed("ray.let-go", exc)

    @contextlib.contextmanager
    def draining(self) -> Iterator[None]:
        """Ray already down at runner exit (the flow shut it down, with the shim
        uninstalled meanwhile or before a watcher round saw it): nothing watched can
        resolve, so let go now rather than drain.  Otherwise, while the exit waits, the
        watchers look at the pending refs at the drain's pace: a run that finished out
        of order is seen within max(``ray_watch.DRAIN_BOUND_FLOOR``, pending ×
        ``BOUND_PER_PENDING``), not the running flow's ``BOUND_FLOOR``."""
        watchers = self._watchers()
        self._let_go_if_down(watchers)
        for watcher in watchers:
            watcher.hurry()
        try:
            yield
        finally:
            for watcher in watchers:
                watcher.unhurry()

    def shutdown_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """``ray.shutdown()``, whoever calls it (the runner's exit, the user's flow,
        Ray's own atexit hook): no watcher's Ray call races the teardown (one
        aborted the driver), and no Ray call is made from ``__del__`` meanwhile."""
        with self._quiesced(shutting_down=True):
            return wrapped(*args, **kwargs)

    def stock_exit(self, wrapped: Any, runner: Any, args: Any, kwargs: Any) -> Any:
        """The stock exit with the watchers stopped (it may shut Ray down); the runs of
        other runners are let go only if Ray really went down (prefect-ray 0.5.0+ shuts
        down only a Ray it started)."""
        with self._quiesced(shutting_down=False):
            return wrapped(*args, **kwargs)

    def pause_at_exit(self) -> None:
        """Registered with atexit after Ray's own hook, so it runs first: stop the
        watchers before the interpreter's ``ray.shutdown()``."""
        for watcher in self._watchers():
            watcher.pause(timeout=5)


def client_problem() -> Optional[str]:
    """Why crash causes cannot be read under the current connection (Ray Client), or None."""
    if not _client_connected():
        return None
    try:
        from . import ray_client

        return ray_client.final_states_problem()
    except Exception as exc:
        guard.failed("ray.client-check", exc)
        return "the Ray Client connection could not be inspected"


class RayTrack(Track):
    """Also wraps ``ray.shutdown`` (see :meth:`RayRuntime.shutdown_wrapper`).  Ray's
    private guards the watcher relies on are checked when it is applied: one that
    has moved is said once, with the Ray version, and in :func:`status`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost: List[str] = []

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        try:
            import ray  # the runner module has imported it already

            wait_parameters = inspect.signature(ray.wait).parameters
        except Exception as exc:
            return f"ray.wait cannot be inspected ({exc})"
        if "fetch_local" not in wait_parameters:
            return "ray.wait has no fetch_local parameter (completion would fetch results)"
        if not callable(getattr(ray, "shutdown", None)) or not callable(getattr(ray, "is_initialized", None)):
            return "ray has no shutdown / is_initialized"
        return None

    def wrap(self, module: Any) -> None:
        super().wrap(module)
        self.wrap_method(sys.modules["ray"], "shutdown", runtime.shutdown_wrapper)
        atexit.register(runtime.pause_at_exit)
        try:
            version = getattr(sys.modules["ray"], "__version__", "?")
            self.lost = [f"Ray {version}: {lost}" for lost in ray_watch.lost_safeties()]
        except Exception as exc:
            guard.failed("ray.track internals", exc)
        for lost in self.lost:
            guard.warn_once(f"ray.track:{lost}", "prefect-future-anchor: ray.track applied without a guard: %s", lost)

    def switch(self, on: bool) -> None:
        super().switch(on)
        if not on:
            atexit.unregister(runtime.pause_at_exit)
            self.lost = []

    def caveats(self) -> List[str]:
        return list(self.lost)


class RayFinalStates(FinalStates):
    def runner_problem(self, module: Any) -> Optional[str]:
        # A run whose engine raised instead of returning its State would read as a
        # Ray error (TASK_EXECUTION_EXCEPTION): every task exception reported Crashed.
        runner = getattr(module, self.runner_name)
        submit = runner.__dict__.get("submit")
        submit = getattr(submit, "__wrapped__", submit)
        run = inspect.getattr_static(runner, "_run_prefect_task", None)
        run = getattr(run, "__func__", run)
        if not code_reads(submit, "_run_prefect_task") or "state" not in code_constants(run):
            return "RayTaskRunner no longer asks the engine for return_type='state'"
        return ray_errors.shape_problem()

    def live_problem(self) -> Optional[str]:
        problem = client_problem()
        if problem is None:
            return None
        guard.warn_once(
            "ray.final-states:client",
            "prefect-future-anchor: ray.final-states is off while connected through Ray Client: %s",
            problem,
        )
        return f"connected through Ray Client: {problem}"


class ReadyDel(Patch):
    """prefect-ray 0.4.0-0.4.4: a dropped future whose ref is ready is silent, and
    finding out fetches nothing."""

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is None and not callable(getattr(module, self.future_name).__dict__.get("__del__")):
            return "PrefectRayFuture.__del__ is not defined on the class"
        return problem

    def wrap(self, module: Any) -> None:
        self.wrap_method(getattr(module, self.future_name), "__del__", _silent_when_ready)


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

runtime = RayRuntime()

_WHERE = dict(
    distribution="prefect-ray",
    module_name="prefect_ray.task_runners",
    runner_name="RayTaskRunner",
    future_name="PrefectRayFuture",
)

TRACK = RayTrack(
    runtime,
    "ray.track",
    applies=">=0.4.0",
    why="The same on Ray: RayTaskRunner.submit swaps PrefectRayFuture objects for "
    "ray.ObjectRef objects (and pickles wait_for); prefect-ray 0.4.0-0.4.4 logs "
    "the false warning, and every release loses unkept runs at ray.shutdown(). "
    "Completion is learnt with ray.wait(fetch_local=False) on one watcher "
    "thread: no result is fetched into the driver.",
    **_WHERE,
)

FINAL_STATES = RayFinalStates(
    runtime,
    "ray.final-states",
    applies=">=0.4.0",
    why="The same on Ray: a run whose worker crashed, whose node died or whose "
    "object was lost (its ObjectRef holds a Ray error, read without fetching a "
    "successful result) is proposed Crashed; cancelled runs Cancelled.",
    track=TRACK,
    **_WHERE,
)

READY_DEL = ReadyDel(
    runtime,
    "ray.ready-del",
    applies=">=0.4.0,<0.4.5",
    why="PrefectRayFuture.__del__ asks whether a run finished with "
    "ray.get(timeout=0), which pulls the whole result into the driver, and "
    "0.4.4 lost a 'return' so it warns even for a finished run. A future whose "
    "ObjectRef is ready (ray.wait(fetch_local=False), nothing fetched) is "
    "dropped silently.",
    **_WHERE,
)

CONTEXT_ONCE = ContextOnce(
    runtime,
    "ray.context-once",
    applies=">=0.4.0",
    why="The same on Ray: RayTaskRunner.submit serializes the whole Settings "
    "tree for every run; it is serialized once per settings state and each "
    "submit gets its own copy.",
    holder="prefect_ray.task_runners",
    reader="RayTaskRunner.submit",
    **_WHERE,
)

PLAIN_WALK = PlainWalk(
    runtime,
    "ray.plain-walk",
    applies=">=0.4.0",
    why="The same on Ray: RayTaskRunner.submit walks its parameters with "
    "visit_collection to swap futures (_exchange_prefect_for_ray_futures) and, "
    "from prefect-ray 0.4.5, again per parameter to collect the run's inputs. "
    "Plain parameters are checked in one tight pass, their inputs looked up by "
    "id() as stock does; anything else is walked by the stock code.",
    walker="_exchange_prefect_for_ray_futures",
    lists_refs=True,
    holder="prefect_ray.task_runners",
    reader="RayTaskRunner.submit",
    collect_optional=True,
    **_WHERE,
)
