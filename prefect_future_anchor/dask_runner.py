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
from .integration import RunnerIntegration, _code_reads

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


class DaskIntegration(RunnerIntegration):
    name = "dask"
    distribution = "prefect-dask"
    module_name = "prefect_dask.task_runners"
    runner_name = "DaskTaskRunner"
    future_name = "PrefectDaskFuture"

    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        # Fires on success, error or cancellation, on distributed's callback thread;
        # it reads the future's status only, never its result.
        raw.add_done_callback(callback)

    def cancel(self, raw: Any) -> None:
        raw.cancel()

    def failure(self, raw: Any) -> Optional[BaseException]:
        # A run's Prefect engine returns its State (Failed included) as the Dask
        # result: "error" means the call itself never returned, its worker died
        # (KilledWorker) or the engine crashed.  Cancelled futures are not failures.
        if raw.status != "error":
            return None
        try:
            return raw.exception(timeout=10)
        except Exception as exc:
            return exc

    # -- prefect-dask 0.3.4+: the client is created lazily, with no lock ------------
    def shape_problem(self, patch: str) -> Optional[str]:
        problem = super().shape_problem(patch)
        if problem is None and patch == "dask.client-once":
            prop = inspect.getattr_static(self.runner_class(), "client", None)
            if not isinstance(prop, property) or prop.fget is None:
                return "DaskTaskRunner.client is not a property"
            if not _code_reads(getattr(prop.fget, "__wrapped__", prop.fget), "_client"):
                return "DaskTaskRunner.client no longer keeps its client in ._client"
        return problem

    def patch_extra(self, patch: str, future: type) -> None:
        if patch != "dask.client-once":
            super().patch_extra(patch, future)
            return
        runner = self.runner_class()
        self._remember(runner, "client")
        setattr(runner, "client", created_once(inspect.getattr_static(runner, "client")))


integration = DaskIntegration()
