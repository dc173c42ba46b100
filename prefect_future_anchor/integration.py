"""What the Dask and Ray integrations have in common: patch, unpatch, shape checks.

Each runner module (``dask_runner``, ``ray_runner``) subclasses
:class:`RunnerIntegration` and supplies the names of the stock objects and two
runner facts: ``when_done`` (call back once a run's underlying future is
finished, without fetching its value) and ``cancel``.

``<runner>.track`` wraps two methods of the stock runner and nothing else:
``submit`` holds the returned future until its run resolves
(:mod:`prefect_future_anchor.anchor`), ``__exit__`` drains what is still
unresolved (:mod:`prefect_future_anchor.drain`) and lets go of the rest.

``<runner>.final-states`` replaces nothing: with it, the completion callback
of a run whose worker died, and the runs the exit cancels, end in a final
state in the API (:mod:`prefect_future_anchor.outcomes`); and an exit that is
not clean (the flow run failed, timed out, was cancelled or interrupted)
cancels the unresolved runs at once instead of applying ``on_exit``.
"""

from __future__ import annotations

import contextvars
import inspect
import time
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import wrapt

from . import anchor, drain, guard, outcomes, releases

_SUBMIT_PARAMETERS = ["self", "task", "parameters", "wait_for", "dependencies"]


def _task_of(task: Any = None, *_a: Any, **_k: Any) -> Any:
    return task


def _current_flow_run() -> Any:
    """The flow run object of the submitting flow (the engine sets its ``state``)."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        return context.flow_run if context is not None else None
    except Exception:
        return None


def _code_reads(function: Any, attribute: str) -> bool:
    """Whether ``function`` (or a function nested in it) reads ``.attribute``."""
    code = getattr(function, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        if attribute in current.co_names:
            return True
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return False


class RunnerIntegration:
    #: short name used in patch names ("dask" -> "dask.track")
    name = ""
    distribution = ""
    module_name = ""
    runner_name = ""
    future_name = ""

    def __init__(self) -> None:
        self.module: Optional[types.ModuleType] = None
        self.applied: Dict[str, str] = {}
        self._originals: List[Tuple[type, str, bool, Any]] = []
        self.on_exit = "wait"
        self.drain_timeout = drain.DEFAULT_DRAIN_TIMEOUT
        #: whether the installed release's future warns when dropped unresolved
        self.false_warning = False

    # -- facts each runner supplies -------------------------------------------------
    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        raise NotImplementedError

    def cancel(self, raw: Any) -> None:
        raise NotImplementedError

    def failure(self, raw: Any) -> Optional[BaseException]:
        """Why a finished underlying future has no result because its worker,
        process or node died or was lost (None if it has one, or was cancelled).
        Called on the completion callback's thread; must not fetch a result."""
        raise NotImplementedError

    #: how the runner's workers are named in crash messages
    worker_word = "worker"

    # -- structure ---------------------------------------------------------------
    def runner_class(self) -> type:
        return getattr(self.module, self.runner_name)

    def future_class(self) -> type:
        return getattr(self.module, self.future_name)

    def shape_problem(self, patch: str) -> Optional[str]:
        """Why the installed module does not look like what ``patch`` was written
        for, or None if it does."""
        module = self.module
        runner = getattr(module, self.runner_name, None)
        future = getattr(module, self.future_name, None)
        if not isinstance(runner, type) or not isinstance(future, type):
            return f"{self.module_name} has no {self.runner_name} / {self.future_name} class"
        kind = patch.split(".", 1)[1]
        if kind == "final-states":
            return self.final_states_problem()
        if kind != "track":
            return None
        submit = runner.__dict__.get("submit")
        if not callable(submit):
            return f"{self.runner_name}.submit is not defined on the class"
        try:
            names = list(inspect.signature(submit).parameters)[: len(_SUBMIT_PARAMETERS)]
        except (TypeError, ValueError):
            names = []
        if names != _SUBMIT_PARAMETERS:
            return f"{self.runner_name}.submit has an unexpected signature {names}"
        if inspect.getattr_static(runner, "__exit__", None) is None:
            return f"{self.runner_name} is not a context manager"
        for attribute in ("wrapped_future", "task_run_id"):
            if inspect.getattr_static(future, attribute, None) is None:
                return f"{self.future_name} has no {attribute}"
        return None

    def final_states_problem(self) -> Optional[str]:
        if f"{self.name}.track" not in self.applied:
            return f"{self.name}.track is not applied"
        future = self.future_class()
        for method in ("result", "wait"):
            if not _code_reads(inspect.getattr_static(future, method, None), "_final_state"):
                return f"{self.future_name}.{method} does not read _final_state"
        try:
            from prefect.client.orchestration import SyncPrefectClient, get_client
            from prefect.context import FlowRunContext
            from prefect.states import Cancelled, Crashed  # noqa: F401
        except ImportError as exc:
            return f"prefect's client API has moved ({exc})"
        for method in ("read_task_run", "set_task_run_state"):
            if not callable(getattr(SyncPrefectClient, method, None)):
                return f"SyncPrefectClient has no {method}"
        if "sync_client" not in inspect.signature(get_client).parameters:
            return "get_client has no sync_client parameter"
        if "flow_run" not in getattr(FlowRunContext, "model_fields", {}):
            return "FlowRunContext has no flow_run"
        return None

    # -- patching ----------------------------------------------------------------
    def _remember(self, owner: type, attribute: str) -> None:
        had = attribute in owner.__dict__
        self._originals.append((owner, attribute, had, owner.__dict__.get(attribute)))

    def patch(self, patch: str) -> None:
        """Apply one patch (already decided by the release table and shape check)."""
        if patch in self.applied:
            return
        if patch.split(".", 1)[1] == "track":
            runner = self.runner_class()
            self.false_warning = releases.has_false_warning(self.distribution)
            self._remember(runner, "submit")
            wrapt.wrap_function_wrapper(runner, "submit", self._submit_wrapper)
            self._remember(runner, "__exit__")
            wrapt.wrap_function_wrapper(runner, "__exit__", self._exit_wrapper)
        elif patch.split(".", 1)[1] == "final-states":
            pass  # read by the track wrappers: nothing of the runner's is replaced
        else:
            self.patch_extra(patch, self.future_class())
        self.applied[patch] = "applied"

    def patch_extra(self, patch: str, future: type) -> None:
        raise ValueError(f"unknown patch {patch}")

    def unpatch(self) -> None:
        """Put back exactly the attributes the patches replaced, newest first."""
        while self._originals:
            owner, attribute, had, original = self._originals.pop()
            if had:
                setattr(owner, attribute, original)
            else:
                try:
                    delattr(owner, attribute)
                except AttributeError:  # pragma: no cover - already gone
                    pass
        self.applied.clear()

    # -- the wrappers ------------------------------------------------------------
    @property
    def tracking(self) -> bool:
        """Hold runs: for the drain, the crash reports, or to silence a release's false warning."""
        return f"{self.name}.track" in self.applied and (
            self.on_exit != "ignore" or self.false_warning or self.final_states
        )

    @property
    def final_states(self) -> bool:
        return f"{self.name}.final-states" in self.applied

    def _submit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        future = wrapped(*args, **kwargs)
        if self.tracking:
            try:
                self._hold(instance, future, _task_of(*args, **kwargs))
            except Exception as exc:
                guard.failed(f"{self.name}.submit", exc)
        return future

    def _hold(self, runner: Any, future: Any, task: Any) -> None:
        runs = anchor.runs_of(runner)
        if runs.context is None:
            runs.context = contextvars.copy_context()
            runs.flow_run = _current_flow_run()
        key = future.task_run_id
        release = runs.hold(key, getattr(task, "name", "?"), future)
        raw = future.wrapped_future
        if not self.final_states:
            done = release
        else:

            def done(*_ignored: Any) -> None:
                try:
                    self._check(runs, key, raw)
                finally:
                    release()

        try:
            self.when_done(raw, done)
        except BaseException:
            release()
            raise

    def _check(self, runs: anchor.Runs, key: Any, raw: Any) -> None:
        """Completion callback of a run: if its worker died, report it Crashed."""
        try:
            if key in runs.cancelled:
                return  # the exit cancelled it (a forced Ray cancel kills the worker)
            cause = self.failure(raw)
            if cause is None:
                return
            entry = runs.get(key)
            if entry is None or runs.context is None:
                return  # let go already (runner exit): the exit accounts for it
            name, future = entry
            outcomes.report_crash(key, name, future, cause, f"{self.runner_name}'s {self.worker_word}", runs.context)
        except Exception as exc:
            guard.failed(f"{self.name}.final-states", exc)

    def _exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        exc_type = args[0] if args else kwargs.get("exc_type")
        cancelled: List[Tuple[Any, str, Any]] = []
        reason = ""
        try:
            try:
                reason = self._unclean_exit(instance, exc_type) or ""
                cancelled, reason = drain.drain(instance, self.on_exit, self.drain_timeout, self.cancel, reason)
            except Exception as exc:
                guard.failed(f"{self.name}.drain", exc)
            except BaseException as interrupt:  # Ctrl-C / termination while the drain waits
                cancelled, reason = drain.drain(
                    instance, "cancel", 0, self.cancel, f"the wait was interrupted ({type(interrupt).__name__})"
                )
                raise
        finally:
            # also when interrupted: the API learns the final states, then the
            # stock exit closes the client / shuts Ray down
            self._settle(instance, cancelled, reason)
            self._let_go(instance)
            result = wrapped(*args, **kwargs)
        return result

    def _unclean_exit(self, runner: Any, exc_type: Any) -> Optional[str]:
        """Why the runner exits other than cleanly, or None for a clean exit."""
        if not self.final_states:
            return None
        if exc_type is not None:
            return f"the flow run was interrupted ({getattr(exc_type, '__name__', exc_type)})"
        runs = anchor.held_by(runner)
        state = getattr(getattr(runs, "flow_run", None), "state", None)
        if state is None or state.is_completed() or state.is_running():
            return None
        return f"the flow run ended {state.name}"

    def _settle(self, runner: Any, cancelled: List[Tuple[Any, str, Any]], reason: str) -> None:
        if not self.final_states:
            return
        deadline = time.monotonic() + outcomes.REPORT_TIMEOUT
        try:
            if cancelled:
                outcomes.report_cancelled(cancelled, reason, deadline)
            outcomes.reporter.flush(max(0.0, deadline - time.monotonic()))
        except Exception as exc:
            guard.failed(f"{self.name}.final-states", exc)

    def _let_go(self, runner: Any) -> None:
        """Drop whatever the runner's runs still hold before the stock exit closes
        the client / shuts Ray down: resolved runs die silently, and a run left
        unresolved (on_exit='ignore', or cancelled) gets the stock treatment."""
        try:
            runs = anchor.held_by(runner)
            if runs is not None:
                runs.release_all()
        except Exception as exc:  # pragma: no cover - defensive
            guard.failed(f"{self.name}.let-go", exc)
