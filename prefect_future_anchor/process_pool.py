"""prefect (core, from 3.4.14): ``ProcessPoolTaskRunner`` / ``PrefectConcurrentFuture``.

The runner runs each task's engine in a ``spawn`` worker of a
``ProcessPoolExecutor``.  ``submit`` hands the call to a resolver thread pool
(it waits for ``wait_for`` and resolves parameter futures, then submits to the
process pool) and returns a ``PrefectConcurrentFuture`` over
``_UnpicklingFuture(_ChainedFuture(resolution future))``: the chained future
ends with the process future (the pickled State, ``return_type="state"``) or
with the exception of whichever step failed.

What stock does (measured on prefect 3.9.1, ``max_workers=2``):

- a task whose process dies (``os._exit``) leaves its run RUNNING in the API
  (no record at all if it died before its first report reached the parent),
  the flow's ``future.state`` says RUNNING (or Pending) and the flow ends
  Completed.  The pool is broken from then on: every call still pending or
  running fails with ``BrokenProcessPool``, the pool terminates its other
  workers, and every later submit of the flow fails the same way;
- six runs submitted and not kept: ``__exit__`` (``cancel_all()``,
  ``shutdown(cancel_futures=True, wait=True)``) lets the calls already handed
  to workers finish (two running, one queued: 3 of 6 ran) and cancels the
  rest before they start; those have no record in the API at all.

What the shim does:

- ``when_done`` hooks the chained future under ``_UnpicklingFuture`` (whose
  own callback unpickles the State; the chained future's bytes are already in
  this process, nothing is fetched or unpickled);
- ``failure``: only ``BrokenProcessPool`` means a dead process.  Every run it
  ends is reported Crashed, not only the one whose process died first: a run
  that was running in another worker was terminated by the broken pool (its
  engine gets no chance to report either), and which worker died first cannot
  be told from the parent.  A run whose engine did report a final state keeps
  it (:mod:`prefect_future_anchor.outcomes`).  A run that never started (still
  queued, or submitted after the pool broke) has no record in the API: its
  future says Crashed, with "never reached a worker process" when that is
  certain (the pool refused the submit), and the log says the API has no record;
  it is not rerun (stock does not, and its inputs may not be rerunnable);
- ``cancel``: a call not yet handed to a worker is cancelled; one already
  running (or queued in a worker's call queue) cannot be stopped by a process
  pool, so ``cancel`` answers False: it runs on, the stock exit waits for it
  and its engine reports its end.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import inspect
from typing import Any, Callable, Optional

from .patches import FinalStates, Track, code_constants, code_reads
from .runtime import Runtime


def _broken_pool() -> type:
    from concurrent.futures.process import BrokenProcessPool

    return BrokenProcessPool


def _chained(raw: Any) -> Any:
    """The future under ``_UnpicklingFuture``: ends with the call, holds its bytes."""
    return raw.wrapped_future


class ProcessPoolRuntime(Runtime):
    name = "process-pool"
    runner_name = "ProcessPoolTaskRunner"
    worker_word = "worker process"

    def when_done(self, raw: Any, on_done: Callable[[], None], on_lost: Callable[[], None]) -> None:
        # Fires on success, error or cancellation, on the process pool's manager
        # thread (or the resolver's, or the caller's if already done).
        _chained(raw).add_done_callback(lambda _future: on_done())

    def cancel(self, raw: Any) -> Optional[bool]:
        chained = _chained(raw)
        if chained.cancel():
            return True
        # Still resolving its inputs: it reaches the pool only after the stock
        # exit shut it down (the submit is refused), so it never runs.
        return None if getattr(chained, "_process_future", None) is None else False

    def failure(self, raw: Any) -> Optional[BaseException]:
        chained = _chained(raw)
        if not chained.done() or chained.cancelled():
            return None
        try:
            cause = chained.exception(timeout=0)
        except Exception:
            return None
        broken = _broken_pool()
        if not isinstance(cause, broken):
            return None
        if getattr(chained, "_process_future", None) is None:
            never = broken(
                f"{cause} (the run never reached a worker process: the pool refused its submit)"
            )
            never.__cause__ = cause
            return never
        return cause


def task_runners(_prefect: Any) -> Any:
    """``prefect.task_runners``, complete once ``prefect`` is: the patches hook the
    end of ``import prefect``.  ``prefect.context`` imports ``prefect.task_runners``
    half way through ``import prefect``, so a hook on the runner module itself
    would run before the client API the final states check exists."""
    return importlib.import_module("prefect.task_runners")


class ProcessPoolTrack(Track):
    def problem(self, module: Any) -> Optional[str]:
        module = task_runners(module)
        problem = super().problem(module)
        if problem is not None:
            return problem
        submit = getattr(module, self.runner_name).__dict__["submit"]
        submit = getattr(submit, "__wrapped__", submit)
        for name in ("_UnpicklingFuture", "_ChainedFuture"):
            if not code_reads(submit, name):
                return f"{self.runner_name}.submit no longer wraps its call in {name}"
        unpickling = getattr(module, "_UnpicklingFuture", None)
        chained = getattr(module, "_ChainedFuture", None)
        if not (isinstance(chained, type) and issubclass(chained, concurrent.futures.Future)):
            return "_ChainedFuture is not a concurrent.futures.Future"
        if not isinstance(unpickling, type) or not code_reads(unpickling.__init__, "wrapped_future"):
            return "_UnpicklingFuture no longer keeps the chained future in .wrapped_future"
        for method in ("cancel", "cancelled"):
            if not code_reads(inspect.getattr_static(chained, method, None), "_process_future"):
                return f"_ChainedFuture.{method} no longer reads ._process_future"
        return None

    def wrap(self, module: Any) -> None:
        super().wrap(task_runners(module))


class ProcessPoolFinalStates(FinalStates):
    def problem(self, module: Any) -> Optional[str]:
        return super().problem(task_runners(module))

    def runner_problem(self, module: Any) -> Optional[str]:
        resolve = getattr(getattr(module, self.runner_name), "_resolve_futures_and_submit", None)
        if resolve is None or "state" not in code_constants(resolve):
            return "ProcessPoolTaskRunner no longer asks the engine for return_type='state'"
        return None


runtime = ProcessPoolRuntime()

_WHERE = dict(
    distribution="prefect",
    module_name="prefect",
    runner_name="ProcessPoolTaskRunner",
    future_name="PrefectConcurrentFuture",
)

TRACK = ProcessPoolTrack(
    runtime,
    "process-pool.track",
    applies=">=3.4.14",
    why="ProcessPoolTaskRunner's exit shuts its pool down with cancel_futures=True: "
    "runs submitted and not kept that no worker had taken yet never run and "
    "leave no record in the API (3 of 6 short runs ran with max_workers=2). Each "
    "submitted future is held until its run resolves, and the runs still "
    "unresolved at runner exit are waited for, or cancelled and named; a run "
    "already in a worker cannot be cancelled and runs on.",
    **_WHERE,
)

FINAL_STATES = ProcessPoolFinalStates(
    runtime,
    "process-pool.final-states",
    applies=">=3.4.14",
    why="A task run whose worker process dies never reports again: stock leaves it "
    "RUNNING in the API, its future says RUNNING and the flow ends Completed. "
    "The broken pool fails every pending call with BrokenProcessPool and "
    "terminates its other workers: each of those runs, unless its engine "
    "reported a final state, is proposed Crashed naming the cause (one that "
    "never started has no record in the API; its future says Crashed). Runs "
    "cancelled at exit are proposed Cancelled; an exit after the flow run "
    "failed, timed out or was interrupted cancels its unresolved runs at once. "
    "Nothing else of Prefect's core is patched (the thread pool already waits).",
    track=TRACK,
    **_WHERE,
)
