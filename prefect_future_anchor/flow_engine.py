"""prefect (core): drain the unkept runs inside the flow run, before Prefect marks it final.

Prefect enters a flow's task runner before the flow run's context and calls
``handle_success`` (which sets the run Completed in the API) before it leaves
either (every release 3.0.0 to 3.9.1).  The runner's exit, where
:mod:`prefect_future_anchor.runtime` drains the runs a flow submitted and did
not keep, therefore comes after the run is final and outside its context: its
lines miss the run's logs, the flow's ``timeout_seconds`` is no longer
running, and the UI refuses to cancel a Completed run, so an operator could
not stop the wait.  With this patch the drain happens first, at the start of
``handle_success``, inside the run:

- its lines go to the flow run's logs (the flow run's logger);
- it is bounded by the flow's own ``timeout_seconds`` as well as
  ``drain_timeout``, and Prefect's flow timeout interrupts it as it would the
  flow (the rest are then cancelled and reported);
- the API shows the run Running while it waits, and a Cancel of the run
  (read every :data:`~prefect_future_anchor.drain.STOP_POLL` seconds, or the
  termination a worker sends for it) cancels the runs still waited for,
  reports them Cancelled and ends the flow run Cancelled.

What the drain leaves (nothing, normally) the runner's exit handles as before.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import threading
import time
from typing import Any, Optional

from . import anchor, drain, guard
from .patches import Patch, code_reads

#: How to stop a drain that runs inside the flow run.
IN_RUN_HINT = " (cancel the flow run to stop waiting: the task runs still waited for are then cancelled)"

#: Longest read of the flow run's state by the cancel watch.
READ_TIMEOUT = 5.0


class CancelWatch:
    """``stop()`` for a drain inside a running flow run: why to stop waiting, or "".

    Reads the flow run's state at most every ``STOP_POLL`` seconds (an API that
    cannot be reached is not a reason to stop); ``interrupt(why)`` from another
    thread stops the drain at its next step (the async engine's await of the
    drain was cancelled)."""

    def __init__(self, flow_run_id: Any) -> None:
        self.flow_run_id = flow_run_id
        self.interrupted = ""
        self._next_read = 0.0

    def interrupt(self, why: str) -> None:
        self.interrupted = why

    def __call__(self) -> str:
        if self.interrupted:
            return self.interrupted
        now = time.monotonic()
        if now < self._next_read:
            return ""
        self._next_read = now + drain.STOP_POLL
        try:
            state = _read_state(self.flow_run_id)
        except Exception:
            return ""
        if state is not None and (state.is_cancelling() or state.is_cancelled()):
            return f"when the flow run was cancelled in the API ({state.name})"
        return ""


def _read_state(flow_run_id: Any) -> Any:
    import httpx
    from prefect.client.orchestration import get_client

    with get_client(httpx_settings={"timeout": httpx.Timeout(READ_TIMEOUT)}, sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def _finish_in_run(watch: Optional[CancelWatch] = None) -> Optional[drain.Outcome]:
    """Drain the current flow run's runner (None if it holds no run)."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        runner = getattr(context, "task_runner", None)
        runs = anchor.held_by(runner) if runner is not None else None
        runtime = getattr(runs, "runtime", None)
        if runs is None or runtime is None or not runtime.tracked or not len(runs):
            return None
        if watch is None:
            watch = CancelWatch(context.flow_run.id)
    except Exception as exc:
        guard.failed("flow.drain-in-run", exc)
        return None
    return runtime.finish(runner, stop=watch, hint=IN_RUN_HINT)


async def _finish_in_run_async() -> Optional[drain.Outcome]:
    """The drain on a thread of its own, so the event loop goes on and Prefect's
    flow timeout (a cancellation of this await) interrupts it: the drain then
    cancels and reports what is left before the cancellation goes on."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or anchor.held_by(getattr(context, "task_runner", None)) is None:
        return None
    watch = CancelWatch(context.flow_run.id)
    done: "concurrent.futures.Future[Optional[drain.Outcome]]" = concurrent.futures.Future()
    # Running, so that the cancellation of the await below (Prefect's timeout) cannot
    # cancel it: asyncio.wrap_future passes a cancellation on to a pending future, and the
    # wait after the interruption would then return at once, while the drain still runs,
    # and the runner's exit would start waiting for the same runs.
    done.set_running_or_notify_cancel()
    copied = contextvars.copy_context()

    def run() -> None:
        try:
            outcome = copied.run(_finish_in_run, watch)
        except BaseException as exc:
            done.set_exception(exc)
        else:
            done.set_result(outcome)

    threading.Thread(target=run, name="prefect-future-anchor-drain", daemon=True).start()
    try:
        return await asyncio.wrap_future(done)
    except BaseException as exc:
        watch.interrupt(f"when the flow run was interrupted ({type(exc).__name__})")
        concurrent.futures.wait([done])
        raise


def _ending(outcome: Optional[drain.Outcome]) -> Any:
    """The state the flow run ends in instead of the one its return value makes
    (None: as usual).  Raises Prefect's flow timeout if the wait reached it."""
    if outcome is None:
        return None
    if outcome.timed_out:
        from prefect.flow_engine import FlowRunTimeoutError

        raise FlowRunTimeoutError(
            "The flow run reached its timeout_seconds while prefect-future-anchor waited for the "
            f"task runs it submitted and did not keep; {len(outcome.cancelled)} were cancelled."
        )
    if outcome.stopped:
        from prefect.states import Cancelled

        return Cancelled(
            message="Cancelled while prefect-future-anchor waited for its unresolved task runs: "
            f"{len(outcome.cancelled)} were cancelled {outcome.reason}"
        )
    return None


def _result(args: Any, kwargs: Any) -> Any:
    return args[0] if args else kwargs.get("result")


def handle_success(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if not patch.applied:
        return wrapped(*args, **kwargs)
    ending = _ending(_finish_in_run())
    if ending is not None:
        instance.set_state(ending, force=True)
        return _result(args, kwargs)
    return wrapped(*args, **kwargs)


def handle_success_async(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    if not patch.applied:
        return wrapped(*args, **kwargs)

    async def drained_first() -> Any:
        try:
            outcome = await _finish_in_run_async()
        except Exception as exc:
            guard.failed("flow.drain-in-run", exc)
            outcome = None
        ending = _ending(outcome)
        if ending is not None:
            await instance.set_state(ending, force=True)
            return _result(args, kwargs)
        return await wrapped(*args, **kwargs)

    return drained_first()


def _engines(module: Any) -> list:
    return [e for e in (getattr(module, "FlowRunEngine", None), getattr(module, "AsyncFlowRunEngine", None)) if e]


class DrainInRun(Patch):
    """Wraps ``handle_success`` of the flow engines (see the module docstring)."""

    def problem(self, module: Any) -> Optional[str]:
        engines = _engines(module)
        if not engines or not all(isinstance(e, type) for e in engines):
            return "prefect.flow_engine has no FlowRunEngine class"
        for engine in engines:
            name = engine.__name__
            success = engine.__dict__.get("handle_success")
            set_state = getattr(engine, "set_state", None)
            if not callable(success) or not callable(set_state):
                return f"{name} has no handle_success / set_state of its own"
            if list(inspect.signature(success).parameters)[:2] != ["self", "result"]:
                return f"{name}.handle_success has an unexpected signature"
            if "force" not in inspect.signature(set_state).parameters:
                return f"{name}.set_state has no force parameter"
            if (engine.__name__ == "AsyncFlowRunEngine") != inspect.iscoroutinefunction(success):
                return f"{name}.handle_success is not {'a coroutine' if engine.__name__ == 'AsyncFlowRunEngine' else 'synchronous'}"
            if not code_reads(getattr(engine, "call_flow_fn", None), "handle_success"):
                return f"{name}.call_flow_fn no longer calls handle_success"
            if not code_reads(inspect.unwrap(getattr(engine, "setup_run_context", None)), "task_runner"):
                return f"{name}.setup_run_context no longer enters the flow's task runner"
        try:
            from prefect.context import FlowRunContext
            from prefect.states import Cancelled  # noqa: F401
        except ImportError as exc:
            return f"prefect's context API has moved ({exc})"
        fields = getattr(FlowRunContext, "model_fields", {})
        for field in ("task_runner", "flow_run", "flow", "start_time"):
            if field not in fields:
                return f"FlowRunContext has no {field}"
        return None

    def wrap(self, module: Any) -> None:
        for engine in _engines(module):
            wrapper = handle_success_async if inspect.iscoroutinefunction(engine.__dict__["handle_success"]) else handle_success
            self.wrap_method(engine, "handle_success", wrapper)


patch = DrainInRun(
    None,
    "flow.drain-in-run",
    distribution="prefect",
    module_name="prefect.flow_engine",
    runner_name="FlowRunEngine",
    future_name="FlowRunEngine",
    applies=">=3.0.0",
    why="Prefect marks a flow run Completed before its task runner exits, so the "
    "wait for unkept runs at that exit came after the run was final and outside it: "
    "its lines missed the run's logs, timeout_seconds no longer applied and Cancel "
    "in the UI was refused. The wait now happens at the start of handle_success, "
    "inside the running flow run: logged to the run, bounded by timeout_seconds, "
    "and a Cancel of the run cancels the runs still waited for and ends it Cancelled.",
)
