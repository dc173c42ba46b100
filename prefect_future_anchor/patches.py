"""One object per patch: its release range, why, its shape check, what it wraps, how to put it back.

A :class:`Patch` is one row of the table in :mod:`prefect_future_anchor.registry`
(the README's compatibility table renders from the same objects).  Its whole
story is in one place: ``applies`` and ``why`` (data), :meth:`problem` (does the
installed module look like what this patch was written for), :meth:`apply`
(wrap, remembering each original) and :meth:`remove` (put back exactly what was
replaced, newest first).  The runner modules define their patches next to their
:class:`~prefect_future_anchor.runtime.Runtime`; :mod:`prefect_future_anchor.lifecycle`
decides and applies them without knowing what any of them does.

The two patches every runner has are here: :class:`Track` (wraps ``submit``
and ``__exit__`` with the runtime's wrappers) and :class:`FinalStates` (wraps
nothing: it switches the runtime's crash and cancellation reports on).
"""

from __future__ import annotations

import inspect
import types
from typing import Any, List, Optional, Tuple

import wrapt

from . import releases
from .runtime import Runtime

_SUBMIT_PARAMETERS = ["self", "task", "parameters", "wait_for", "dependencies"]


def code_reads(function: Any, attribute: str) -> bool:
    """Whether ``function`` (or a function nested in it) reads ``.attribute``."""
    code = getattr(function, "__code__", None)
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        if attribute in current.co_names:
            return True
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return False


def code_constants(function: Any) -> set:
    """The constants of ``function``'s code and of the functions nested in it."""
    code = getattr(function, "__code__", None)
    stack = [code] if code is not None else []
    found: set = set()
    while stack:
        current = stack.pop()
        for constant in current.co_consts:
            if isinstance(constant, types.CodeType):
                stack.append(constant)
            elif isinstance(constant, str):
                found.add(constant)
    return found


class Patch:
    """One change to stock classes of ``module_name`` for ``distribution`` in ``applies``."""

    def __init__(
        self,
        runtime: Runtime,
        name: str,
        distribution: str,
        module_name: str,
        runner_name: str,
        future_name: str,
        applies: str,
        why: str,
    ) -> None:
        self.runtime = runtime
        self.name = name
        self.distribution = distribution
        self.module_name = module_name
        self.runner_name = runner_name
        self.future_name = future_name
        self.applies = applies
        self.why = why
        self.applied = False
        #: (owner, attribute, whether the owner had it, the original, what the patch put there)
        self._originals: List[Tuple[Any, str, bool, Any, Any]] = []

    @property
    def runner(self) -> str:
        """The prefix that names every patch of this runner ("dask" for "dask.track")."""
        return self.name.split(".", 1)[0]

    @property
    def requires(self) -> Tuple[str, ...]:
        """Names of the patches this one cannot work without: disabling one of them
        disables this one too."""
        return ()

    def __repr__(self) -> str:
        return f"<Patch {self.name} {self.distribution}{self.applies}{' applied' if self.applied else ''}>"

    # -- what the subclass says --------------------------------------------------
    def problem(self, module: Any) -> Optional[str]:
        """Why ``module`` does not look like what this patch was written for, or None."""
        runner = getattr(module, self.runner_name, None)
        future = getattr(module, self.future_name, None)
        if not isinstance(runner, type) or not isinstance(future, type):
            return f"{self.module_name} has no {self.runner_name} / {self.future_name} class"
        return None

    def wrap(self, module: Any) -> None:
        """Replace what this patch replaces (through :meth:`replace` / :meth:`wrap_method`)."""

    def switch(self, on: bool) -> None:
        """Turn what this patch turns on in the runtime (called after wrap, before unwrap)."""

    def caveats(self) -> List[str]:
        """What an applied patch no longer guards against on the installed
        releases (a private internal it relies on has moved), for :func:`status`."""
        return []

    def live_problem(self) -> Optional[str]:
        """Why an applied patch cannot work right now (e.g. under the current
        connection), for :func:`~prefect_future_anchor.status`; None if it can."""
        return None

    # -- the lifecycle -----------------------------------------------------------
    def apply(self, module: Any) -> None:
        if self.applied:
            return
        try:
            self.wrap(module)
            self.switch(True)
        except BaseException:
            self._restore()
            raise
        self.applied = True

    def remove(self) -> List[str]:
        """Put back the attributes this patch replaced, newest first.  An attribute
        that something else replaced after this patch (another library wrapping
        ``submit`` over the shim's wrapper) is left as it is, so that its change
        survives: its name is returned.  The patch's switch is off either way, so a
        wrapper of the shim's left inside another's passes every call through."""
        if self.applied:
            self.switch(False)
        kept = self._restore()
        self.applied = False
        return kept

    def _restore(self) -> List[str]:
        kept = []
        while self._originals:
            owner, attribute, had, original, ours = self._originals.pop()
            if getattr(owner, "__dict__", {}).get(attribute) is not ours:
                kept.append(f"{getattr(owner, '__name__', owner)}.{attribute}")
            elif had:
                setattr(owner, attribute, original)
            else:
                try:
                    delattr(owner, attribute)
                except AttributeError:  # pragma: no cover - already gone
                    pass
        return kept

    def wrap_method(self, owner: Any, attribute: str, wrapper: Any) -> None:
        had, original = attribute in owner.__dict__, owner.__dict__.get(attribute)
        wrapt.wrap_function_wrapper(owner, attribute, wrapper)
        self._originals.append((owner, attribute, had, original, owner.__dict__.get(attribute)))

    def replace(self, owner: Any, attribute: str, value: Any) -> None:
        had, original = attribute in owner.__dict__, owner.__dict__.get(attribute)
        setattr(owner, attribute, value)
        self._originals.append((owner, attribute, had, original, owner.__dict__.get(attribute)))


class Track(Patch):
    """``submit`` holds each run until it resolves; ``__exit__`` drains or cancels the rest."""

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        runner = getattr(module, self.runner_name)
        future = getattr(module, self.future_name)
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

    def wrap(self, module: Any) -> None:
        runner = getattr(module, self.runner_name)
        self.runtime.false_warning = releases.has_false_warning(self.distribution)
        self.wrap_method(runner, "submit", self.runtime.submit_wrapper)
        self.wrap_method(runner, "__exit__", self.runtime.exit_wrapper)

    def switch(self, on: bool) -> None:
        self.runtime.tracked = on


class FinalStates(Patch):
    """Crash and cancellation reports: nothing of the runner's is replaced (the
    track wrappers read the switch), so it needs ``track`` applied."""

    def __init__(self, *args: Any, track: Track, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.track = track

    @property
    def requires(self) -> Tuple[str, ...]:
        return (self.track.name,)

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        if not self.track.applied:
            return f"{self.track.name} is not applied"
        future = getattr(module, self.future_name)
        for method in ("result", "wait"):
            if not code_reads(inspect.getattr_static(future, method, None), "_final_state"):
                return f"{self.future_name}.{method} does not read _final_state"
        try:
            from prefect.client.orchestration import SyncPrefectClient, get_client
            from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId  # noqa: F401
            from prefect.context import FlowRunContext
            from prefect.events import Event  # noqa: F401
            from prefect.events.clients import get_events_client
            from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings  # noqa: F401
            from prefect.states import Cancelled, Crashed  # noqa: F401
        except ImportError as exc:
            return f"prefect's client API has moved ({exc})"
        for method in ("read_task_run", "read_task_runs"):
            if not callable(getattr(SyncPrefectClient, method, None)):
                return f"SyncPrefectClient has no {method}"
        if "sync_client" not in inspect.signature(get_client).parameters:
            return "get_client has no sync_client parameter"
        if "reconnection_attempts" not in inspect.signature(get_events_client).parameters:
            return "get_events_client has no reconnection_attempts parameter"
        if "flow_run" not in getattr(FlowRunContext, "model_fields", {}):
            return "FlowRunContext has no flow_run"
        return self.runner_problem(module)

    def runner_problem(self, module: Any) -> Optional[str]:
        """What else the runner's ``failure`` fact relies on (None if it holds)."""
        return None

    def switch(self, on: bool) -> None:
        self.runtime.final_states = on


class GlobalPatch(Patch):
    """A patch that replaces a global of ``holder``, the module whose function
    ``reader`` (``"Class.method"`` there) calls it; switched by :attr:`on`."""

    def __init__(self, *args: Any, holder: str, reader: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holder = holder
        self.reader = reader
        self.on = False

    def _holder(self) -> Any:
        import importlib

        return importlib.import_module(self.holder)

    def reads(self, holder: Any, name: str) -> bool:
        """Whether ``reader`` in ``holder`` (unwrapped) reads the global ``name``."""
        owner_name, _, method = self.reader.partition(".")
        function = inspect.getattr_static(getattr(holder, owner_name, None), method, None)
        return code_reads(getattr(function, "__wrapped__", function), name)

    def switch(self, on: bool) -> None:
        self.on = on


class ContextOnce(GlobalPatch):
    """The settings part of each submit's serialized context, made once per
    settings state (:mod:`prefect_future_anchor.context_cache`).

    The global replaced (and put back) is ``serialize_context``, which the
    runner's submit calls.  Nothing the run receives changes.
    """

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        try:
            holder = self._holder()
        except ImportError as exc:
            return f"{self.holder} cannot be imported ({exc})"
        stock = getattr(holder, "serialize_context", None)
        if not callable(stock):
            return f"{self.holder} has no serialize_context"
        if not self.reads(holder, "serialize_context"):
            return f"{self.holder}.{self.reader} no longer calls serialize_context"
        try:
            from prefect.context import SettingsContext, serialize_context
        except ImportError as exc:
            return f"prefect.context has moved ({exc})"
        if getattr(stock, "__wrapped__", stock) is not serialize_context:
            return f"{self.holder}.serialize_context is not prefect.context.serialize_context"
        if not code_reads(serialize_context, "SettingsContext") or not code_reads(serialize_context, "serialize"):
            return "prefect.context.serialize_context no longer serializes SettingsContext.get()"
        if set(getattr(SettingsContext, "model_fields", {})) != {"profile", "settings"}:
            return "SettingsContext no longer holds exactly profile and settings"
        current = SettingsContext.get()
        if current is not None:
            from .context_cache import SettingsPayloads

            try:  # prefect 3.0.x: a Setting holds a lambda, and nothing can key the cache
                SettingsPayloads.key(current)
            except Exception as exc:
                return f"prefect's settings cannot be pickled to key the cache ({type(exc).__name__}: {exc})"
        return None

    def wrap(self, module: Any) -> None:
        from . import context_cache

        holder = self._holder()
        stock = holder.serialize_context
        self.replace(holder, "serialize_context", context_cache.reusing(stock, self.name, lambda: self.on))


class PlainWalk(GlobalPatch):
    """Parameters of plain data checked in one tight pass instead of walked by
    ``visit_collection`` (:mod:`prefect_future_anchor.plain_walk`).

    ``walker``: the runner's method that swaps Prefect futures for its own
    (``lists_refs``: it returns the upstream refs too), wrapped; the global
    replaced is ``collect_task_run_inputs_sync``, which the runner's submit path
    calls (``collect_optional``: releases whose reader does not call it,
    prefect-ray before 0.4.5, have nothing to replace there).  What a run
    receives and records does not change.
    """

    _RESULTS = ("run_results", "task_run_results")

    def __init__(self, *args: Any, walker: str, lists_refs: bool, collect_optional: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.walker = walker
        self.lists_refs = lists_refs
        self.collect_optional = collect_optional

    def collects(self, holder: Any) -> bool:
        """Whether the runner's submit path collects the run's inputs through ``holder``'s global."""
        return self.reads(holder, "collect_task_run_inputs_sync")

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        try:
            from prefect.utilities.collections import visit_collection
        except ImportError as exc:
            return f"prefect.utilities.collections has moved ({exc})"
        parameters = list(inspect.signature(visit_collection).parameters)
        if parameters[:2] != ["expr", "visit_fn"] or not {"return_data", "max_depth", "_seen"} <= set(parameters):
            return f"visit_collection has an unexpected signature {parameters}"
        runner = getattr(module, self.runner_name)
        walker = runner.__dict__.get(self.walker)
        walker = getattr(walker, "__wrapped__", walker)
        if not callable(walker):
            return f"{self.runner_name}.{self.walker} is not defined on the class"
        if len(inspect.signature(walker).parameters) != 2:
            return f"{self.runner_name}.{self.walker} no longer takes one value"
        if not code_reads(walker, "visit_collection") or not code_reads(walker, "wrapped_future"):
            return f"{self.runner_name}.{self.walker} no longer swaps futures with visit_collection"
        if getattr(getattr(module, "visit_collection", None), "__wrapped__", getattr(module, "visit_collection", None)) is not visit_collection:
            return f"{self.module_name}.visit_collection is not prefect's visit_collection"
        submit = runner.__dict__.get("submit")
        if not code_reads(getattr(submit, "__wrapped__", submit), self.walker):
            return f"{self.runner_name}.submit no longer calls {self.walker}"
        try:
            holder = self._holder()
        except ImportError as exc:
            return f"{self.holder} cannot be imported ({exc})"
        if not self.collects(holder):
            if self.collect_optional:
                return None
            return f"{self.holder}.{self.reader} no longer calls collect_task_run_inputs_sync"
        return self._collect_problem(holder)

    def _collect_problem(self, holder: Any) -> Optional[str]:
        try:
            from prefect.context import FlowRunContext
            from prefect.utilities.engine import collect_task_run_inputs_sync, get_state_for_result
        except ImportError as exc:
            return f"prefect.utilities.engine has moved ({exc})"
        stock = getattr(holder, "collect_task_run_inputs_sync", None)
        if getattr(stock, "__wrapped__", stock) is not collect_task_run_inputs_sync:
            return f"{self.holder}.collect_task_run_inputs_sync is not prefect's"
        if list(inspect.signature(collect_task_run_inputs_sync).parameters) != ["expr", "future_cls", "max_depth"]:
            return "collect_task_run_inputs_sync has an unexpected signature"
        if len(collect_task_run_inputs_sync.__defaults__ or ()) != 2:
            return "collect_task_run_inputs_sync has no default future_cls and max_depth"
        for name in ("visit_collection", "get_state_for_result", "State", "quote"):
            if not code_reads(collect_task_run_inputs_sync, name):
                return f"collect_task_run_inputs_sync no longer reads {name}"
        if self.results_attribute() is None:
            return "get_state_for_result no longer looks results up in one FlowRunContext mapping by id()"
        if get_state_for_result.__globals__.get("FlowRunContext") is not FlowRunContext:
            return "get_state_for_result does not read prefect.context.FlowRunContext"
        if self.results_attribute() not in getattr(FlowRunContext, "model_fields", {}):
            return f"FlowRunContext has no {self.results_attribute()}"
        return None

    def results_attribute(self) -> Optional[str]:
        """The ``FlowRunContext`` mapping ``get_state_for_result`` reads, or None."""
        from prefect.utilities.engine import get_state_for_result

        read = [name for name in self._RESULTS if code_reads(get_state_for_result, name)]
        if len(read) != 1 or not code_reads(get_state_for_result, "id") or not code_reads(get_state_for_result, "get"):
            return None
        return read[0]

    def wrap(self, module: Any) -> None:
        from . import plain_walk

        runner = getattr(module, self.runner_name)
        enabled = lambda: self.on  # noqa: E731
        self.wrap_method(runner, self.walker, plain_walk.swapping(self.name, enabled, self.lists_refs))
        holder = self._holder()
        if self.collects(holder):
            from prefect.context import FlowRunContext

            stock = holder.collect_task_run_inputs_sync
            attribute = self.results_attribute()
            self.replace(
                holder,
                "collect_task_run_inputs_sync",
                plain_walk.collecting(stock, self.name, enabled, FlowRunContext, attribute),
            )
