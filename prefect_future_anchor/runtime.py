"""What happens inside a patched ``submit`` and ``__exit__``: runner-agnostic.

A :class:`Runtime` per runner kind (Dask, Ray, Prefect's process pool) holds
the three facts only that runner knows (``when_done``: call back once a run's
underlying future has ended, fetching nothing; ``cancel``; ``failure``: why a
finished underlying future has no result because its worker died) and the
switches the patches turn on (:mod:`prefect_future_anchor.patches`).  Deciding
and applying patches is not done here.

- ``submit``: the returned future is held until its run resolves
  (:mod:`prefect_future_anchor.anchor`), so a dropped parent's ``__del__`` is
  silent and the exit knows which runs are unresolved.
- ``__exit__``: a clean exit drains the unresolved runs under ``on_exit``
  (:mod:`prefect_future_anchor.drain`); an exit after the flow run failed, timed
  out, was cancelled or interrupted cancels them at once, whatever else is
  applied.  With final states on, the runs it cancelled and the runs whose
  worker died end in a final state in the API
  (:mod:`prefect_future_anchor.outcomes`).  Then everything is let go and the
  stock exit runs, whatever happened before.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

from . import anchor, drain, guard, outcomes


def _task_of(task: Any = None, *_a: Any, **_k: Any) -> Any:
    return task


def _remember_flow(runs: anchor.Runs) -> None:
    """What the end of the flow needs of the submitting flow run, read at its
    first submit: the flow run (the engine sets its ``state``), its logger (the
    runner's exit happens after Prefect left the flow run's context, and lines
    logged there would reach the console only, not the run's logs in the API)
    and its own deadline (``timeout_seconds`` from when the run started)."""
    try:
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is None:
            return
        runs.flow_run = context.flow_run
        from prefect.logging.loggers import flow_run_logger

        runs.log = flow_run_logger(context.flow_run, context.flow)
        runs.bound = flow_deadline(context)
    except Exception as exc:
        guard.failed("reading the flow run at submit", exc)


#: How long before the flow's own timeout the drain gives up: its cancellations and
#: their reports are made before Prefect's timer interrupts the flow.
BOUND_MARGIN = 1.0


def flow_deadline(context: Any) -> Optional[float]:
    """The drain's deadline from the flow run's own (its ``timeout_seconds`` counted
    from when its run context was entered, less :data:`BOUND_MARGIN`), on the
    monotonic clock, or None."""
    seconds = getattr(getattr(context, "flow", None), "timeout_seconds", None)
    started = getattr(context, "start_time", None)
    if not seconds or started is None:
        return None
    import datetime

    elapsed = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    return time.monotonic() + float(seconds) - max(0.0, elapsed) - BOUND_MARGIN


#: How to stop a drain that runs after Prefect marked the flow run final (its
#: Cancel in the UI is refused then).
EXIT_HINT = (
    " (the flow run is already final in the API, so Cancel cannot stop this wait: interrupt the "
    "process, or set PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT)"
)


Cancelled = List[Tuple[Any, str, Any]]


def _fallback_logger(runner: Any) -> Any:
    """Where the drain's lines go when the first submit found no flow run."""
    return getattr(runner, "logger", None) or drain.logger


class Runtime:
    #: short name, the prefix of the runner's patch names ("dask" -> "dask.track")
    name = ""
    runner_name = ""
    #: how the runner's workers are named in crash messages
    worker_word = "worker"

    def __init__(self) -> None:
        #: switched by the patches (``<name>.track``, ``<name>.final-states``)
        self.tracked = False
        self.final_states = False
        #: whether the installed release's future warns when dropped unresolved
        self.false_warning = False
        self.on_exit = "wait"
        self.drain_timeout = drain.DEFAULT_DRAIN_TIMEOUT

    # -- facts each runner supplies ----------------------------------------------
    def when_done(self, raw: Any, on_done: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Call ``on_done()`` once ``raw`` has ended (success, error, cancellation),
        or ``on_lost()`` if that can no longer be learnt (the cluster went away)."""
        raise NotImplementedError

    def cancel(self, raw: Any) -> Optional[bool]:
        """Stop ``raw``'s run.  False if it cannot be stopped (a process pool's
        running call): it runs on, its engine reports its own end, and the
        shim does not report it Cancelled."""
        raise NotImplementedError

    def cancel_batch(self, raws: List[Any]) -> None:
        """Stop many runs in one call, or raise (then each is cancelled on its own)."""
        raise NotImplementedError

    def failure(self, raw: Any) -> Optional[BaseException]:
        """Why a finished underlying future has no result because its worker,
        process or node died or was lost (None if it has one, or was cancelled).
        Called on the completion callback's thread; must not fetch a result."""
        raise NotImplementedError

    @contextlib.contextmanager
    def draining(self) -> Iterator[None]:
        """Around the drain: what a runner must settle before it decides what is
        unresolved, and what it needs while it waits."""
        yield

    def stock_exit(self, wrapped: Any, runner: Any, args: Any, kwargs: Any) -> Any:
        """The stock ``__exit__`` (a runner may need to quiesce around it)."""
        return wrapped(*args, **kwargs)

    # -- submit ------------------------------------------------------------------
    @property
    def tracking(self) -> bool:
        """Hold runs: for the drain, the crash reports, or to silence a release's false warning."""
        return self.tracked and (self.on_exit != "ignore" or self.false_warning or self.final_states)

    def submit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
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
            runs.runtime = self
            _remember_flow(runs)
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
            self.when_done(raw, done, release)
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
            context = runs.context
            if entry is None or context is None:
                return  # let go already (runner exit): the exit accounts for it
            name, future = entry
            outcomes.report_crash(key, name, future, cause, f"{self.runner_name}'s {self.worker_word}", context, runs)
        except Exception as exc:
            guard.failed(f"{self.name}.final-states", exc)

    # -- the end of the flow --------------------------------------------------------
    def finish(
        self,
        runner: Any,
        abandon: str = "",
        stop: Optional[Callable[[], str]] = None,
        hint: str = "",
    ) -> drain.Outcome:
        """Drain the runner's unresolved runs, then get the final states of the runs
        it cancelled (and of crashes still being reported) into the API.  Called
        inside the running flow run (:mod:`prefect_future_anchor.flow_engine`),
        then again at the runner's exit for whatever is left.  An interruption
        while it waits (Ctrl-C, termination, Prefect's flow timeout) cancels the
        rest at once, reports them, and is raised again."""
        runs = anchor.held_by(runner)
        log = getattr(runs, "log", None) or _fallback_logger(runner)
        bound = getattr(runs, "bound", None)
        outcome = drain.Outcome()
        try:
            try:
                with self.draining():
                    outcome = drain.drain(
                        runner,
                        self.on_exit,
                        self.drain_timeout,
                        self.cancel,
                        abandon,
                        log=log,
                        bound=bound,
                        stop=stop,
                        hint=hint,
                        cancel_batch=self.cancel_batch,
                    )
            except Exception as exc:
                guard.failed(f"{self.name}.drain", exc)
            except BaseException as interrupt:  # Ctrl-C / termination / timeout while the drain waits
                outcome = drain.drain(
                    runner,
                    "cancel",
                    0,
                    self.cancel,
                    f"the wait was interrupted ({type(interrupt).__name__})",
                    log=log,
                    cancel_batch=self.cancel_batch,
                )
                raise
        finally:
            self._settle_through_interrupts(runs, outcome)
        return outcome

    def _settle_through_interrupts(self, runs: Optional[anchor.Runs], outcome: drain.Outcome) -> None:
        """Report the cancelled runs even if an interruption lands meanwhile (Prefect's
        flow timeout fires once, into whatever the flow thread runs): the reports are
        queued and waited for again (queueing is idempotent), then it is raised."""
        interrupted: Optional[BaseException] = None
        for _attempt in range(3):
            try:
                self._settle(runs, outcome.cancelled, outcome.reason)
                break
            except BaseException as exc:  # an interruption: Exceptions are guarded inside
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted

    def exit_wrapper(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        exc_type = args[0] if args else kwargs.get("exc_type")
        try:
            try:
                self.finish(instance, self._unclean_exit(instance, exc_type) or "", hint=EXIT_HINT)
            except Exception as exc:  # pragma: no cover - finish guards itself
                guard.failed(f"{self.name}.drain", exc)
        finally:
            # Also when interrupted: then everything is let go and the stock exit
            # closes the client / shuts the cluster down.
            try:
                self._let_go(instance)
            finally:
                result = self.stock_exit(wrapped, instance, args, kwargs)
        return result

    def _unclean_exit(self, runner: Any, exc_type: Any) -> Optional[str]:
        """Why the runner exits other than cleanly, or None for a clean exit: the
        flow raised through the runner, or its run ended in a non-Completed state.
        ``GeneratorExit`` is how a generator flow whose consumer stopped early
        ends (Prefect completes the run first): the run's state decides."""
        if exc_type is not None and not (isinstance(exc_type, type) and issubclass(exc_type, GeneratorExit)):
            return f"the flow run was interrupted ({getattr(exc_type, '__name__', exc_type)})"
        runs = anchor.held_by(runner)
        state = getattr(getattr(runs, "flow_run", None), "state", None)
        if state is None or state.is_completed() or state.is_running():
            if exc_type is not None and (state is None or state.is_running()):
                return "the flow run was interrupted (GeneratorExit)"
            return None
        return f"the flow run ended {state.name}"

    def _settle(self, runs: Optional[anchor.Runs], cancelled: Cancelled, reason: str) -> None:
        """Report the cancelled runs and finish this runner's crash reports (not
        another runner's: they share the reporter), in the flow run's context (its
        API settings, and its logger for the line naming what the API could not be
        told)."""
        if not self.final_states or runs is None:
            return  # a runner that held no run has no report to wait for
        try:
            context = getattr(runs, "context", None)
            if context is not None:
                context.copy().run(outcomes.settle_at_exit, cancelled, reason, owner=runs)
            else:
                outcomes.settle_at_exit(cancelled, reason, owner=runs)
        except Exception as exc:
            guard.failed(f"{self.name}.final-states", exc)

    def _let_go(self, runner: Any) -> None:
        """Drop whatever the runner's runs still hold before the stock exit closes
        the client / shuts the cluster down: resolved runs die silently, and a run
        left unresolved (on_exit='ignore', or cancelled) gets the stock treatment.
        The flow's context goes too (it holds the runner, which holds the runs)."""
        try:
            runs = anchor.held_by(runner)
            if runs is not None:
                runs.context = None
                runs.flow_run = None
                runs.log = None
                runs.release_all()
        except Exception as exc:  # pragma: no cover - defensive
            guard.failed(f"{self.name}.let-go", exc)
