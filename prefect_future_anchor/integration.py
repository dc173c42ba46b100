"""What the Dask and Ray integrations have in common: patch, unpatch, shape checks.

Each runner module (``dask_runner``, ``ray_runner``) subclasses
:class:`RunnerIntegration` and supplies the names of the stock objects and the
three runner facts the anchoring and the drain need: ``when_done``,
``is_done`` and ``cancel``.
"""

from __future__ import annotations

import functools
import inspect
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import wrapt

from . import anchor, drain, guard

_SUBMIT_PARAMETERS = ["self", "task", "parameters", "wait_for", "dependencies"]


def _bind_submit(task: Any, parameters: Any = None, wait_for: Any = None, *_a: Any, **_k: Any):
    return task, wait_for


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
    #: short name used in patch names ("dask" -> "dask.anchor", "dask.drain")
    name = ""
    distribution = ""
    module_name = ""
    runner_name = ""
    future_name = ""
    #: the stock method that unwraps upstream Prefect futures in ``submit``
    conversion_name = ""

    def __init__(self) -> None:
        self.module: Optional[types.ModuleType] = None
        self.applied: Dict[str, str] = {}
        self._originals: List[Tuple[type, str, bool, Any]] = []
        self.on_exit = "wait"
        self.drain_timeout = drain.DEFAULT_DRAIN_TIMEOUT

    # -- facts each runner supplies -------------------------------------------------
    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        raise NotImplementedError

    def is_done(self, raw: Any) -> bool:
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
        submit = runner.__dict__.get("submit")
        if not callable(submit):
            return f"{self.runner_name}.submit is not defined on the class"
        try:
            names = list(inspect.signature(submit).parameters)[: len(_SUBMIT_PARAMETERS)]
        except (TypeError, ValueError):
            names = []
        if names != _SUBMIT_PARAMETERS:
            return f"{self.runner_name}.submit has an unexpected signature {names}"
        suffix = patch.split(".", 1)[1]
        if suffix == "anchor":
            prop = inspect.getattr_static(future, "wrapped_future", None)
            if not isinstance(prop, property) or prop.fget is None:
                return f"{self.future_name}.wrapped_future is not a property"
            conversion = inspect.getattr_static(runner, self.conversion_name, None)
            if isinstance(conversion, (staticmethod, classmethod)):
                conversion = conversion.__func__
            if conversion is None or not _code_reads(conversion, "wrapped_future"):
                return (
                    f"{self.runner_name}.{self.conversion_name} no longer unwraps futures "
                    "through .wrapped_future"
                )
        elif suffix == "drain":
            if inspect.getattr_static(runner, "__exit__", None) is None:
                return f"{self.runner_name} is not a context manager"
        return None

    # -- patching ----------------------------------------------------------------
    def _remember(self, owner: type, attribute: str) -> None:
        had = attribute in owner.__dict__
        self._originals.append((owner, attribute, had, owner.__dict__.get(attribute)))

    def patch(self, patch: str) -> None:
        """Apply one patch (already decided by the release table and shape check)."""
        if patch in self.applied:
            return
        runner, future = self.runner_class(), self.future_class()
        suffix = patch.split(".", 1)[1]
        if suffix in ("anchor", "drain") and "submit" not in self._patched_attributes():
            self._remember(runner, "submit")
            wrapt.wrap_function_wrapper(runner, "submit", self._submit_wrapper)
        if suffix == "anchor":
            self._remember(future, "wrapped_future")
            original = inspect.getattr_static(future, "wrapped_future")
            setattr(future, "wrapped_future", anchor.recording_property(original))
        elif suffix == "drain":
            self._remember(runner, "__exit__")
            wrapt.wrap_function_wrapper(runner, "__exit__", self._exit_wrapper)
        else:
            self.patch_extra(patch, future)
        self.applied[patch] = "applied"

    def patch_extra(self, patch: str, future: type) -> None:
        raise ValueError(f"unknown patch {patch}")

    def _patched_attributes(self) -> List[str]:
        return [attribute for _owner, attribute, _had, _orig in self._originals]

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
    def anchoring(self) -> bool:
        return f"{self.name}.anchor" in self.applied

    @property
    def draining(self) -> bool:
        return f"{self.name}.drain" in self.applied and self.on_exit != "ignore"

    def _submit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        previous = anchor.begin_capture()
        try:
            future = wrapped(*args, **kwargs)
        finally:
            captured = anchor.end_capture(previous)
        try:
            self._after_submit(instance, future, captured, args, kwargs)
        except Exception as exc:
            guard.failed(f"{self.name}.submit", exc)
        return future

    def _after_submit(self, runner: Any, future: Any, captured: Dict[int, Any], args: Any, kwargs: Any) -> None:
        task, wait_for = _bind_submit(*args, **kwargs)
        parents: Any = ()
        if self.anchoring:
            anchor.add_waited(captured, wait_for, self.future_class())
            captured.pop(id(future), None)
            parents = captured.values()
        forget = None
        if self.draining:
            inflight = drain.inflight_of(runner)
            key = future.task_run_id
            inflight.add(key, getattr(task, "name", "?"), future)
            forget = functools.partial(inflight.discard, key)

        raw = future.wrapped_future
        try:
            release = anchor.hold(parents, lambda release: self.when_done(raw, release), forget)
        except BaseException:
            if forget is not None:
                forget()
            raise
        if forget is not None:
            inflight.attach(key, release)

    def _exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        try:
            drain.drain(instance, self.on_exit, self.drain_timeout, self.is_done, self.cancel)
        except Exception as exc:
            guard.failed(f"{self.name}.drain", exc)
        except BaseException:
            # interrupted while waiting (Ctrl-C): still close the client / shut Ray down
            wrapped(*args, **kwargs)
            raise
        return wrapped(*args, **kwargs)
