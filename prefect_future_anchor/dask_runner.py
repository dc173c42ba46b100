"""prefect-dask: ``DaskTaskRunner`` / ``PrefectDaskFuture``.

``DaskTaskRunner.submit`` unwraps upstream ``PrefectDaskFuture`` objects in
``parameters`` (and, from 0.3.2, ``wait_for``) with ``_optimize_futures``; the
dropped wrapper's ``__del__`` warns on prefect-dask 0.3.0-0.3.5.

From 0.3.4 the runner creates its Dask client on first use (the ``client``
property) without a lock; ``dask.client-once`` makes that creation happen once
per runner however many threads submit their first runs at the same moment.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from typing import Any, Callable, Dict, Optional

from . import guard
from .patches import FinalStates, Patch, Track, code_constants, code_reads
from .runtime import Runtime

_creation_locks: Dict[int, "threading.RLock"] = {}
_creation_guard = threading.Lock()


def _creation_lock(runner: Any) -> "threading.RLock":
    """One lock per runner instance, dropped with the runner (runners define
    ``__eq__``, so they cannot key a WeakKeyDictionary)."""
    key = id(runner)
    with _creation_guard:
        lock = _creation_locks.get(key)
        if lock is None:
            lock = _creation_locks[key] = threading.RLock()
            weakref.finalize(runner, _creation_locks.pop, key, None)
        return lock


def created_once(original: property) -> property:
    """The runner's ``client`` property, with the first creation serialised.

    Once the client exists the stock getter is called with no lock taken; while
    it does not, one thread creates it and the others wait for it and share it.
    """
    getter = original.fget

    def client(self):
        try:
            if self.__dict__.get("_client"):
                return getter(self)
            lock = _creation_lock(self)
        except Exception as exc:  # the shim's own failure: the stock getter, unguarded
            guard.failed("dask.client-once", exc)
            return getter(self)
        with lock:
            return getter(self)

    client.__doc__ = getter.__doc__
    client.__wrapped__ = getter  # type: ignore[attr-defined]
    return property(client, original.fset, original.fdel, original.__doc__)


class DaskRuntime(Runtime):
    name = "dask"
    runner_name = "DaskTaskRunner"

    def when_done(self, raw: Any, on_done: Callable[[], None], on_lost: Callable[[], None]) -> None:
        # Fires on success, error or cancellation (the client closing cancels what
        # is pending), on distributed's callback thread; it reads the future's
        # status only, never its result.
        raw.add_done_callback(lambda _future: on_done())

    def cancel(self, raw: Any) -> None:
        raw.cancel()

    def failure(self, raw: Any) -> Optional[BaseException]:
        # A run's Prefect engine returns its State (Failed included) as the Dask
        # result (submit passes return_type="state": checked by the patch):
        # "error" means the call itself never returned, its worker died
        # (KilledWorker) or the engine crashed.  Cancelled futures are not failures.
        if raw.status != "error":
            return None
        try:
            return raw.exception(timeout=10)
        except Exception as exc:
            return exc


class DaskFinalStates(FinalStates):
    def runner_problem(self, module: Any) -> Optional[str]:
        submit = getattr(module, self.runner_name).__dict__.get("submit")
        submit = getattr(submit, "__wrapped__", submit)
        if "state" not in code_constants(submit) or not code_reads(submit, "submit"):
            return "DaskTaskRunner.submit no longer asks the engine for return_type='state'"
        return None


class ClientOnce(Patch):
    """prefect-dask 0.3.4+: the runner's lazily made client, created once per runner."""

    def problem(self, module: Any) -> Optional[str]:
        problem = super().problem(module)
        if problem is not None:
            return problem
        prop = inspect.getattr_static(getattr(module, self.runner_name), "client", None)
        if not isinstance(prop, property) or prop.fget is None:
            return "DaskTaskRunner.client is not a property"
        if not code_reads(getattr(prop.fget, "__wrapped__", prop.fget), "_client"):
            return "DaskTaskRunner.client no longer keeps its client in ._client"
        return None

    def wrap(self, module: Any) -> None:
        runner = getattr(module, self.runner_name)
        self.replace(runner, "client", created_once(inspect.getattr_static(runner, "client")))


runtime = DaskRuntime()

_WHERE = dict(
    distribution="prefect-dask",
    module_name="prefect_dask.task_runners",
    runner_name="DaskTaskRunner",
    future_name="PrefectDaskFuture",
)

TRACK = Track(
    runtime,
    "dask.track",
    applies=">=0.3.0",
    why="DaskTaskRunner.submit swaps upstream PrefectDaskFuture objects for raw "
    "distributed.Future objects and nothing keeps the Prefect future: on "
    "prefect-dask 0.3.0-0.3.5 a dropped parent logs 'A future was garbage "
    "collected before it resolved' although its dependent uses it, and on "
    "every release a task submitted and not kept is lost when the flow ends "
    "(the client closes with it pending). Each submitted future is held until "
    "its run resolves (its __del__ is then silent), and the runs still "
    "unresolved at runner exit are waited for, or cancelled and named.",
    **_WHERE,
)

FINAL_STATES = DaskFinalStates(
    runtime,
    "dask.final-states",
    applies=">=0.3.0",
    why="A task run whose Dask worker dies (the scheduler gives up on it: "
    "KilledWorker) never reports again: stock leaves it RUNNING in the API for "
    "good, its future says RUNNING and the flow ends Completed. The completion "
    "callback of a held run whose future ends in error reads the run's state "
    "and, unless the engine reported a final one, proposes Crashed naming the "
    "cause; runs cancelled at exit are proposed Cancelled; an exit after the "
    "flow run failed, timed out or was interrupted cancels its unresolved runs "
    "at once. Nothing is replaced on the runner (the track wrappers read it); "
    "a run that ends normally costs no API call.",
    track=TRACK,
    **_WHERE,
)

CLIENT_ONCE = ClientOnce(
    runtime,
    "dask.client-once",
    applies=">=0.3.4",
    why="DaskTaskRunner creates its Dask client on first use with no lock: "
    "threads of a flow that submit their first runs at the same moment each "
    "create a client (and, with no address, a LocalCluster), and a child "
    "sent through one client can reach the scheduler before its parent sent "
    "through another, which cancels it ('lost dependencies'). The client is "
    "created once.",
    **_WHERE,
)
