"""What the Dask and Ray integrations have in common: patch, unpatch, shape checks.

Each runner module (``dask_runner``, ``ray_runner``) subclasses
:class:`RunnerIntegration` and supplies the names of the stock objects and two
runner facts: ``when_done`` (call back once a run's underlying future is
finished, without fetching its value) and ``cancel``.

``<runner>.track`` wraps two methods of the stock runner and nothing else:
``submit`` holds the returned future until its run resolves
(:mod:`prefect_future_anchor.anchor`), ``__exit__`` drains what is still
unresolved (:mod:`prefect_future_anchor.drain`) and lets go of the rest.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import wrapt

from . import anchor, drain, guard, releases

_SUBMIT_PARAMETERS = ["self", "task", "parameters", "wait_for", "dependencies"]


def _task_of(task: Any = None, *_a: Any, **_k: Any) -> Any:
    return task


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
        if patch.split(".", 1)[1] != "track":
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
        """Hold runs: for the drain, or to silence a release's false warning."""
        return f"{self.name}.track" in self.applied and (self.on_exit != "ignore" or self.false_warning)

    def _submit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        future = wrapped(*args, **kwargs)
        if self.tracking:
            try:
                self._hold(instance, future, _task_of(*args, **kwargs))
            except Exception as exc:
                guard.failed(f"{self.name}.submit", exc)
        return future

    def _hold(self, runner: Any, future: Any, task: Any) -> None:
        release = anchor.runs_of(runner).hold(future.task_run_id, getattr(task, "name", "?"), future)
        try:
            self.when_done(future.wrapped_future, release)
        except BaseException:
            release()
            raise

    def _exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            drain.drain(instance, self.on_exit, self.drain_timeout, self.cancel)
        except Exception as exc:
            guard.failed(f"{self.name}.drain", exc)
        finally:
            # also when interrupted while waiting (Ctrl-C): close the client / shut Ray down
            self._let_go(instance)
            result = wrapped(*args, **kwargs)
        return result

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
