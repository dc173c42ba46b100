"""Tasks that report the context they run in, in a plain module the Dask and Ray workers can import.

``look`` returns what a task can observe of its surroundings on the worker:
the flow-run, task-run, tags, settings and asset contexts and the
``prefect.runtime`` values, each as plain comparable data.  ``nest`` submits
``look`` from inside a task run (the task-run context then travels with the
submit).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Dict

from prefect import flow, task


def _plain(value: Any) -> Any:
    """Comparable data: models dumped, other objects by type and name."""
    if hasattr(value, "model_dump"):
        try:
            return value.model_dump(mode="json")
        except Exception:
            return repr(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_plain(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return f"{type(value).__module__}.{type(value).__qualname__}:{getattr(value, 'name', '')}"


def seen() -> Dict[str, Any]:
    import prefect.runtime
    from prefect.context import FlowRunContext, SettingsContext, TagsContext, TaskRunContext

    flow_run_context = FlowRunContext.get()
    task_run_context = TaskRunContext.get()
    observed: Dict[str, Any] = {
        "flow_run_context": _plain(flow_run_context.serialize()) if flow_run_context else None,
        "task_run_parameters": _plain(task_run_context.parameters) if task_run_context else None,
        "task_run_tags": sorted(task_run_context.task_run.tags) if task_run_context else None,
        "tags": sorted(TagsContext.get().current_tags),
        "settings": _plain(SettingsContext.get().settings),
        "profile": _plain(SettingsContext.get().profile),
        "runtime": {
            "flow_run.id": str(prefect.runtime.flow_run.id),
            "flow_run.name": prefect.runtime.flow_run.name,
            "flow_run.parameters": _plain(prefect.runtime.flow_run.parameters),
            "flow_run.tags": sorted(prefect.runtime.flow_run.tags),
            "deployment.id": prefect.runtime.deployment.id,
            "deployment.parameters": _plain(prefect.runtime.deployment.parameters),
            "task_run.tags": sorted(prefect.runtime.task_run.tags),
            "task_run.parameters": _plain(prefect.runtime.task_run.parameters),
        },
    }
    # How the run was called (not compared): dask.payload-once's function is on the stack.
    frame, observed["payload-once"] = sys._getframe(), False
    while frame is not None and not observed["payload-once"]:
        observed["payload-once"] = frame.f_code.co_name == "run_prefect_task"
        frame = frame.f_back
    try:
        from prefect.context import AssetContext
    except ImportError:
        observed["asset_context"] = "no AssetContext in this release"
    else:
        asset_context = AssetContext.get()
        observed["asset_context"] = _plain(asset_context.serialize()) if asset_context else None
        if observed["asset_context"] and task_run_context:  # the run's own id: told as such, not by value
            own = str(task_run_context.task_run.id)
            if observed["asset_context"].get("task_run_id") == own:
                observed["asset_context"]["task_run_id"] = "<this task run>"
    return observed


@task(persist_result=False)
def look(label: str) -> Dict[str, Any]:
    return seen()


@task(persist_result=False)
def nest(label: str) -> Dict[str, Any]:
    """Called (not submitted) in the flow, so that it runs in the flow's process
    and submits ``look`` through the flow's runner with its own task-run
    context current; returns what ``look`` saw."""
    return look.submit(label).result()


@contextlib.contextmanager
def _deployment_variables():
    """prefect 3.6+ carries the deployment id and parameters in context variables
    of their own; set them as a deployment run would (absent before: nothing)."""
    import uuid

    import prefect.context as context

    if not hasattr(context, "_deployment_id"):
        yield
        return
    token_id = context._deployment_id.set(uuid.UUID("12345678-1234-5678-1234-567812345678"))
    token_parameters = context._deployment_parameters.set({"region": "north", "size": 3})
    try:
        yield
    finally:
        context._deployment_parameters.reset(token_parameters)
        context._deployment_id.reset(token_id)


def situations():
    from prefect import tags
    from prefect.settings import PREFECT_TASK_DEFAULT_RETRIES, temporary_settings

    def plain():
        return contextlib.nullcontext()

    def tagged():
        return tags("blue", "green")

    def settings():
        return temporary_settings({PREFECT_TASK_DEFAULT_RETRIES: 7})

    @contextlib.contextmanager
    def both():
        with tags("red"), temporary_settings({PREFECT_TASK_DEFAULT_RETRIES: 5}):
            yield

    return {
        "plain": (plain, False),
        "tags": (tagged, False),
        "settings": (settings, False),
        "tags and settings": (both, False),
        "deployment": (_deployment_variables, False),
        "inside a task run": (plain, True),
        "inside a task run under tags and settings": (both, True),
    }


def _switch(patch_names: str, on: bool) -> None:
    """Switch the patches named (``"a+b"``: several) on or off."""
    from prefect_future_anchor import registry

    for name in patch_names.split("+"):
        next(p for p in registry.PATCHES if p.name == name).switch(on)


@flow(persist_result=False)
def observed(patch_name: str) -> Dict[Any, Any]:
    """Each situation, submitted with the patch off (stock: the control), on, and on again."""
    seen = {}
    for name, (situation, inside_a_task) in situations().items():
        for side in ("stock", "patched", "patched again"):
            _switch(patch_name, side != "stock")
            try:
                with situation():
                    seen[name, side] = nest(name) if inside_a_task else look.submit(name).result()
            finally:
                _switch(patch_name, True)
    return seen


@flow(persist_result=False)
def changed_in_place(patch_name: str) -> Dict[Any, Any]:
    """A field of the live Settings object assigned between two submits, stock then patched."""
    from prefect.settings import PREFECT_TASK_DEFAULT_RETRIES, get_current_settings, temporary_settings

    seen = {}
    for side in ("stock", "patched"):
        _switch(patch_name, side == "patched")
        try:
            with temporary_settings({PREFECT_TASK_DEFAULT_RETRIES: 3}):
                seen[side, "before"] = look.submit("before").result()["settings"]["tasks"]["default_retries"]
                get_current_settings().tasks.default_retries = 8
                seen[side, "after"] = look.submit("after").result()["settings"]["tasks"]["default_retries"]
        finally:
            _switch(patch_name, True)
    return seen
