"""prefect-dask: ``DaskTaskRunner`` / ``PrefectDaskFuture``.

``DaskTaskRunner.submit`` unwraps upstream ``PrefectDaskFuture`` objects in
``parameters`` (and, from 0.3.2, ``wait_for``) with ``_optimize_futures``; the
dropped wrapper's ``__del__`` warns on prefect-dask 0.3.0-0.3.5.

From 0.3.4 the runner creates its Dask client on first use (the ``client``
property) without a lock; ``dask.client-once`` makes that creation happen once
per runner however many threads submit their first runs at the same moment.
"""

from __future__ import annotations

import collections
import inspect
import threading
import weakref
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import guard
from .patches import ContextOnce, FinalStates, Patch, PlainWalk, Track, code_constants, code_reads
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


#: While submits keep coming, how often the client's event loop takes in the
#: runs submitted since its last look (it stops looking once a look finds none).
REGISTER_SECONDS = 0.05

_COMPLETIONS = "_prefect_future_anchor_completions"

#: Register completions in batches on the loop (:class:`Completions`); False:
#: one ``Future.add_done_callback`` per run, the previous design (the submit
#: benchmark compares the two).
BATCHED = True


class Completions:
    """The completion callbacks of one Dask client's runs, registered by its
    event loop in batches.

    ``distributed.Future.add_done_callback`` costs each submit a wake-up of the
    client's event loop from the submitting thread (``loop.add_callback``: a
    self-pipe write, then a coroutine that takes the GIL from the submitting
    thread) and each completion a hop to distributed's callback thread (issue
    21; the shim's own work in a submit went from 72 to 39 µs, against a submit
    of about 31 ms of CPU here: benchmarks/RESULTS.md, sources A and H).  Here a submit appends to a deque and wakes
    the loop only when it is not already looking; the loop takes the deque in
    every ``REGISTER_SECONDS`` while it fills, waits for each run with
    distributed's own ``done_callback`` coroutine (status only, nothing is
    fetched) and calls back on the loop itself: a release is a few dict and
    lock operations and blocks on nothing.  A run whose call raised (status
    "error": its worker died) goes to a thread of the shim's, because its
    callback asks Dask for the exception, a blocking call.
    """

    def __init__(self, client: Any, waiter: Callable[..., Any]) -> None:
        self._loop = client.loop
        self._waiter = waiter
        self._queued: Deque[Tuple[Any, Callable[[Any], None]]] = collections.deque()
        self._lock = threading.Lock()
        self._looking = False
        self._tasks: set = set()

    def add(self, raw: Any, callback: Callable[[Any], None]) -> None:
        self._queued.append((raw, callback))
        if not self._looking:  # else the loop takes this one in at its next look
            self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._looking:
                return
            self._looking = True
        try:
            self._loop.add_callback(self._take)
        except BaseException:
            with self._lock:
                self._looking = False
            raise

    def _take(self) -> None:
        """On the event loop: start waiting for what was queued; look again soon
        while submits come, and stop looking once a look finds nothing."""
        import asyncio

        taken = 0
        while True:
            try:
                raw, callback = self._queued.popleft()
            except IndexError:
                break
            taken += 1
            try:
                task = asyncio.ensure_future(self._waiter(raw, callback))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            except Exception as exc:  # the shim's own failure: distributed's own callback
                guard.failed("dask.track completions", exc)
                raw.add_done_callback(callback)
        if taken:
            try:
                self._loop.call_later(REGISTER_SECONDS, self._take)
                return
            except Exception as exc:  # the loop closing: the next submit wakes it as usual
                guard.failed("dask.track completions", exc)
        with self._lock:
            self._looking = False
        if self._queued:  # appended after the last pop by a submit that saw the flag still set
            self._wake()


class ErrorCallbacks:
    """The callbacks of runs whose call raised, one after another on a thread of
    the shim's (each asks Dask for the exception, a blocking call the event loop
    must not make).  The thread ends once it finds nothing left to do: nothing
    of the shim's idles in the process for its life."""

    def __init__(self) -> None:
        self._queued: Deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def submit(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._queued.append(callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prefect-future-anchor-dask-errors", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._queued:
                    self._thread = None
                    return
                callback = self._queued.popleft()
            try:
                callback()
            except Exception as exc:
                guard.failed("dask.track completions", exc)


_errors = ErrorCallbacks()


def _on_loop(on_done: Callable[[], None]) -> Callable[[Any], None]:
    def deliver(raw: Any) -> None:
        """On the event loop: call back, or, for a run whose call raised, on a thread."""
        try:
            if raw.status != "error":
                on_done()
                return
            _errors.submit(on_done)
        except Exception as exc:
            guard.failed("dask.track completions", exc)

    return deliver


def _waiter() -> Optional[Callable[..., Any]]:
    """distributed's coroutine behind ``Future.add_done_callback`` (waits on the
    future's status, then calls back on the loop), or None if it has moved."""
    try:
        from distributed.client import done_callback
    except ImportError:
        return None
    if not inspect.iscoroutinefunction(done_callback):
        return None
    try:
        if list(inspect.signature(done_callback).parameters) != ["future", "callback"]:
            return None
    except (TypeError, ValueError):
        return None
    return done_callback


def _completions(raw: Any) -> Optional[Completions]:
    """The :class:`Completions` of ``raw``'s client, or None where that client
    has no event loop or distributed's coroutine has moved (then each run
    registers with the public ``add_done_callback``)."""
    client = getattr(raw, "client", None)
    found = getattr(client, "__dict__", {}).get(_COMPLETIONS)
    if found is None:
        waiter = _waiter() if getattr(client, "loop", None) is not None else None
        if waiter is None:
            return None
        with _creation_guard:
            found = client.__dict__.setdefault(_COMPLETIONS, Completions(client, waiter))
    return found


class DaskRuntime(Runtime):
    name = "dask"
    runner_name = "DaskTaskRunner"

    def when_done(self, raw: Any, on_done: Callable[[], None], on_lost: Callable[[], None]) -> None:
        # Fires on success, error or cancellation (the client closing cancels what
        # is pending), on the client's event loop (see Completions); it reads the
        # future's status only, never its result.
        completions = _completions(raw) if BATCHED else None
        if completions is None:
            raw.add_done_callback(lambda _future: on_done())
        else:
            completions.add(raw, _on_loop(on_done))

    def cancel(self, raw: Any) -> None:
        raw.cancel()

    def cancel_batch(self, raws: List[Any]) -> None:
        """One ``client.cancel`` call per client for all the runs."""
        clients: Dict[int, Tuple[Any, List[Any]]] = {}
        for raw in raws:
            clients.setdefault(id(raw.client), (raw.client, []))[1].append(raw)
        for client, futures in clients.values():
            client.cancel(futures)

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


class DaskTrack(Track):
    """distributed's private ``done_callback`` (the batched completions) is checked
    when the patch is applied: if it has moved, each run registers with the public
    ``Future.add_done_callback`` instead, which is said once and in :func:`status`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lost: List[str] = []

    def wrap(self, module: Any) -> None:
        super().wrap(module)
        if _waiter() is None:
            from importlib import metadata

            try:
                version = metadata.version("distributed")
            except Exception:
                version = "?"
            self.lost = [
                f"distributed {version}: distributed.client.done_callback has changed: each run's "
                "completion is registered with Future.add_done_callback (a wake-up of the client's "
                "event loop per submit)"
            ]
        for lost in self.lost:
            guard.warn_once(
                f"dask.track:{lost}", "prefect-future-anchor: dask.track applied without a shortcut: %s", lost
            )

    def switch(self, on: bool) -> None:
        super().switch(on)
        if not on:
            self.lost = []

    def caveats(self) -> List[str]:
        return list(self.lost)


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

TRACK = DaskTrack(
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

CONTEXT_ONCE = ContextOnce(
    runtime,
    "dask.context-once",
    applies=">=0.3.0",
    why="Every DaskTaskRunner submit calls prefect.context.serialize_context(), "
    "and nine tenths of it (16-17 ms of a 23 ms submit on prefect 3.9.1) is "
    "serializing the whole Settings tree, the same for every submit made under "
    "the same settings. The settings part is serialized once per settings "
    "state (keyed by its pickled state: temporary_settings, profiles and "
    "in-place changes give another key) and each submit gets its own copy; "
    "the flow-run, task-run, tags, asset and deployment parts are made per "
    "submit as stock does.",
    holder="prefect_dask.client",
    reader="PrefectDaskClient.submit",
    **_WHERE,
)

PLAIN_WALK = PlainWalk(
    runtime,
    "dask.plain-walk",
    applies=">=0.3.0",
    why="Every DaskTaskRunner submit walks its parameters element by element "
    "with Prefect's visit_collection twice: _optimize_futures (to swap "
    "futures) and collect_task_run_inputs_sync (to record the run's inputs); a "
    "20,000-element list makes a submit nine tenths those walks. A parameter "
    "made only of plain lists, tuples, sets and dicts of ints, floats, "
    "strings, bytes, bools and None is checked in one tight pass instead: it "
    "is passed as it is, and its inputs are looked up by id() among the flow "
    "run's results as stock does (any hit, and anything not plain, is walked "
    "by the stock code).",
    walker="_optimize_futures",
    lists_refs=False,
    holder="prefect_dask.client",
    reader="PrefectDaskClient.submit",
    **_WHERE,
)
