"""``dask.payload-once``: a run's Prefect ``Task`` and context sent once, not in every run.

Stock ``PrefectDaskClient.submit`` puts the Prefect ``Task``, its function and
the serialized context (with the ``Flow`` and its ``DaskTaskRunner``) into the
Dask spec of every run: about 64 KB of Python objects once the scheduler has
unpickled it.  The scheduler keeps the last messages it sent to each worker
(``BatchedSend.recent_message_log``, ``distributed.admin.low-level-log-length``
batches per worker), and every ``compute-task`` message holds its run's spec:
a scheduler shared by many flow runs grows by each run's payload until that
log is full, long after the runs were forgotten (upstream #21697).

Under this patch the stock submit runs as it is, up to the point where it
hands the call to ``distributed.Client.submit``.  There the call is rewritten:

- ``(task, context without its per-run parts)`` is pickled once per submit
  and, per distinct pickle, sent once to the cluster as a small Dask task of
  its own (a *payload*: ``functools.partial(run, pickled)``, computed by a
  worker like any task, so an adaptive cluster with no worker scales up for it
  as it does for the runs: nothing is scattered);
- the run itself becomes ``dask.utils.apply(payload, (), per-run arguments)``
  (through a ``functools.partial``, see :func:`_apply`):
  its spec holds the parameters and ``wait_for`` (Dask must see the futures in
  them) and, as bytes, the task run id, its dependencies and the per-run part
  of the context (the asset context): not the ``Task``, and no Prefect model
  the scheduler would unpickle;
- on the worker the payload unpickles ``(task, context)`` afresh for every run
  (so runs share no object, as with stock), puts the per-run part back in the
  context's key order, and calls the engine exactly as stock's wrapper does.

The run's key keeps stock's prefix (the task function's name) with a random
hex part instead of a ``tokenize`` of the whole call (the run id in the call
made it unique already): the dashboard groups runs as before, and the submit
no longer normalizes the ``Task`` and the settings for a key.

What a payload lives for (invariant: a payload is held by the client while a
run that uses it is unresolved, plus at most :data:`LINGER` idle ones): each
run takes a use of its payload and gives it back when it resolves, however it
ends (result, exception, cancellation, worker death: the completion of its
Dask future).  A payload no run uses is kept idle, up to :data:`LINGER` of
them per client, so that a flow submitting one run at a time does not send it
again each time; the oldest idle one beyond that is released.  Closing the
client (the runner's exit) releases whatever is left.  A payload that ended in
error (Dask gave up on the worker computing it) is not given to new runs: they
get a fresh one, and the broken one is released when its last run ends.
"""

from __future__ import annotations

import collections
import functools
import inspect
import threading
import uuid
from typing import Any, Dict, Optional, Tuple

from . import guard
from .dask_runner import _WHERE, runtime
from .patches import Patch, code_reads

#: The context's parts that differ from run to run (prefect-dask 0.3.6+ puts each
#: run's asset context in): sent with the run, the rest with the payload.
PER_RUN = ("asset_context",)

#: Idle payloads (no unresolved run uses them) each client keeps for reuse.
LINGER = 4

_PAYLOADS = "_prefect_future_anchor_payloads"
_SUBMIT_OPTIONS = (
    "key",
    "workers",
    "resources",
    "retries",
    "priority",
    "fifo_timeout",
    "allow_other_workers",
    "actor",
    "actors",
    "pure",
)
#: The arguments of a run that may hold Dask futures (Dask must see them as
#: dependencies); the others are packed into bytes.
_MAY_HOLD_FUTURES = ("parameters", "wait_for")
_local = threading.local()


def _remote_runner() -> Any:
    """The function a payload calls on the worker.  It is made here, inside a
    function, so that cloudpickle sends it by value: a worker needs prefect, as
    for stock, not prefect-future-anchor.  It reads no global of this module."""

    def run_prefect_task(payload: bytes, packed: bytes, **kwargs: Any) -> Any:
        import pickle

        task, context, order = pickle.loads(payload)
        per_run, plain = pickle.loads(packed)
        context.update(per_run)
        kwargs.update(plain)
        kwargs["task"] = task
        kwargs["context"] = {key: context[key] for key in order if key in context}
        if task.isasync:
            import asyncio

            from prefect.task_engine import run_task_async

            return asyncio.run(run_task_async(**kwargs))
        from prefect.task_engine import run_task_sync

        return run_task_sync(**kwargs)

    return run_prefect_task


_run = _remote_runner()


class _Payload:
    __slots__ = ("pickled", "future", "users")

    def __init__(self, pickled: bytes, future: Any) -> None:
        self.pickled = pickled
        self.future = future
        self.users = 0


#: A payload future in one of these states is not used again (its worker died while
#: computing it and Dask gave up: KilledWorker; or it was cancelled).
_BROKEN = ("error", "cancelled")


class Payloads:
    """The payloads one Dask client holds, by their pickled bytes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_bytes: Dict[bytes, _Payload] = {}
        self._idle: "collections.OrderedDict[bytes, _Payload]" = collections.OrderedDict()
        #: how many payloads were ever sent (a test tells reuse from one per run)
        self.sent = 0

    def take(self, pickled: bytes, send: Any) -> _Payload:
        """The payload for ``pickled`` (sent with ``send`` if there is none, or
        none that can be used), with one use taken."""
        with self._lock:
            found = self._usable(pickled)
            if found is not None:
                found.users += 1
                return found
        future = send()
        with self._lock:
            found = self._usable(pickled)
            if found is None:
                found = self._by_bytes[pickled] = _Payload(pickled, future)
                self.sent += 1
            found.users += 1
        if found.future is not future:  # another thread sent the same one meanwhile: keep the first
            future.release()
        return found

    def _usable(self, pickled: bytes) -> Optional[_Payload]:
        """Under the lock: the payload held for ``pickled``, taken out of the idle
        ones; a broken one is let go here (the runs still using it keep it)."""
        found = self._by_bytes.get(pickled)
        if found is None:
            return None
        self._idle.pop(pickled, None)
        if getattr(found.future, "status", None) in _BROKEN:
            del self._by_bytes[pickled]
            if found.users == 0:
                found.future.release()
            return None
        return found

    def give_back(self, payload: _Payload) -> None:
        """One use of ``payload`` has ended (its run resolved, however it ended)."""
        released = []
        with self._lock:
            payload.users -= 1
            if payload.users > 0:
                return
            if self._by_bytes.get(payload.pickled) is not payload:
                released.append(payload.future)  # let go as broken: its last run has ended
            else:
                self._idle[payload.pickled] = payload
                while len(self._idle) > LINGER:
                    _oldest, idle = self._idle.popitem(last=False)
                    del self._by_bytes[idle.pickled]
                    released.append(idle.future)
        for future in released:  # outside the lock: a release reaches the client's loop
            future.release()

    def held(self) -> int:
        """How many payloads the client holds (in use or idle)."""
        with self._lock:
            return len(self._by_bytes)

    def in_use(self) -> int:
        """How many payloads an unresolved run uses."""
        with self._lock:
            return sum(1 for payload in self._by_bytes.values() if payload.users > 0)


_creation_guard = threading.Lock()


def payloads_of(client: Any) -> Payloads:
    """The :class:`Payloads` of a Dask client, made on first use."""
    found = client.__dict__.get(_PAYLOADS)
    if found is None:
        with _creation_guard:
            found = client.__dict__.setdefault(_PAYLOADS, Payloads())
    return found


_APPLY: Any = None


def _apply(apply: Any) -> Any:
    """``dask.utils.apply`` behind a ``functools.partial`` (made once): distributed
    before the task-spec graphs (2024.12) sends a ``(apply, func, args, kwargs)``
    task with ``func`` as the function itself, so a payload's key in that place
    would reach the worker as a string; a partial is a plain function to it."""
    global _APPLY
    if _APPLY is None:
        _APPLY = functools.partial(apply)
    return _APPLY


def _split(context: dict) -> Tuple[dict, dict, tuple]:
    shared = {key: value for key, value in context.items() if key not in PER_RUN}
    per_run = {key: context[key] for key in PER_RUN if key in context}
    return shared, per_run, tuple(context)


class PayloadOnce(Patch):
    """Rewrites the ``distributed.Client.submit`` call that stock
    ``PrefectDaskClient.submit`` makes for a Prefect ``Task``; every other
    ``Client.submit`` call passes through untouched."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on = False

    # -- what it checks --------------------------------------------------------------
    def problem(self, module: Any) -> Optional[str]:
        return super().problem(module) or self._stock_problem()

    @staticmethod
    def _stock_problem() -> Optional[str]:
        """What no longer looks as the rewriting expects, in dask, distributed,
        prefect's engine and prefect-dask's client, or None."""
        try:
            from dask.utils import apply
            from distributed import Client
            from distributed.protocol import pickle as dask_pickle
            from prefect.task_engine import run_task_async, run_task_sync  # noqa: F401
            from prefect_dask.client import PrefectDaskClient
        except ImportError as exc:
            return f"a module the patch reads has moved ({exc})"
        if not callable(getattr(dask_pickle, "dumps", None)):
            return "distributed.protocol.pickle has no dumps"
        try:
            if list(inspect.signature(apply).parameters)[:3] != ["func", "args", "kwargs"]:
                return "dask.utils.apply no longer takes (func, args, kwargs)"
            names = list(inspect.signature(inspect.getattr_static(Client, "submit")).parameters)
        except (TypeError, ValueError) as exc:
            return f"a signature cannot be read ({exc})"
        if names != ["self", "func", "args", *_SUBMIT_OPTIONS, "kwargs"]:
            return f"distributed.Client.submit has an unexpected signature {names}"
        submit = inspect.getattr_static(PrefectDaskClient, "submit", None)
        submit = getattr(submit, "__wrapped__", submit)
        if not all(code_reads(submit, name) for name in ("serialize_context", "submit")):
            return "PrefectDaskClient.submit no longer serializes the context and calls Client.submit"
        consts = set(getattr(getattr(submit, "__code__", None), "co_consts", ()))
        if not {"task", "context", "task_run_id"} <= consts:
            return "PrefectDaskClient.submit no longer passes task, context and task_run_id"
        runner = next((c for c in consts if inspect.iscode(c) and c.co_name == "wrapper_func"), None)
        if runner is None or not {"isasync", "run_task_async", "run_task_sync"} <= set(runner.co_names):
            return "PrefectDaskClient.submit's wrapper no longer runs run_task_sync / run_task_async"
        return None

    # -- what it changes -------------------------------------------------------------
    def wrap(self, module: Any) -> None:
        from distributed import Client
        from prefect_dask.client import PrefectDaskClient

        self.wrap_method(PrefectDaskClient, "submit", self._marking)
        self.wrap_method(Client, "submit", self._rewriting)

    def switch(self, on: bool) -> None:
        self.on = on

    def _marking(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        """Stock ``PrefectDaskClient.submit``, told apart (for this thread) as the
        caller of the ``Client.submit`` it makes for a Prefect task."""
        if not self.on:
            return wrapped(*args, **kwargs)
        previous = getattr(_local, "client", None)
        _local.client = instance
        try:
            return wrapped(*args, **kwargs)
        finally:
            _local.client = previous

    def _rewriting(self, wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if getattr(_local, "client", None) is not instance or not self.on:
            return wrapped(*args, **kwargs)
        _local.client = None  # the one call of this submit; anything nested is stock
        if len(args) != 1 or "task" not in kwargs or "context" not in kwargs or kwargs.get("actor") or kwargs.get("actors"):
            return wrapped(*args, **kwargs)
        try:
            call = self._rewritten(wrapped, instance, args[0], dict(kwargs))
        except Exception as exc:  # the shim's own failure: the stock call
            guard.failed(self.name, exc)
            return wrapped(*args, **kwargs)
        payload, run_args, options = call
        payloads = payloads_of(instance)
        try:
            future = wrapped(*run_args, **options)
        except Exception as exc:
            payloads.give_back(payload)
            guard.failed(self.name, exc)
            return wrapped(*args, **kwargs)  # stock raises what the user must see, if anything
        try:
            done = functools.partial(payloads.give_back, payload)
            self.runtime.when_done(future, done, done)
        except Exception as exc:
            guard.failed(self.name, exc)
        return future

    @staticmethod
    def _rewritten(wrapped: Any, client: Any, func: Any, kwargs: dict) -> Tuple[_Payload, tuple, dict]:
        from dask.utils import apply, funcname
        from distributed.protocol import pickle as dask_pickle

        options = {name: kwargs.pop(name) for name in _SUBMIT_OPTIONS if name in kwargs}
        task = kwargs.pop("task")
        shared, per_run, order = _split(kwargs.pop("context"))
        pickled = dask_pickle.dumps((task, shared, order))

        def send() -> Any:
            return wrapped(functools.partial, _run, pickled, key=f"prefect-payload-{uuid.uuid4().hex}", pure=False)

        payload = payloads_of(client).take(pickled, send)
        if options.get("key") is None:
            options["key"] = f"{funcname(func)}-{uuid.uuid4().hex}"
        # What holds no Dask future goes as bytes: the scheduler keeps a few
        # hundred bytes, not Prefect models it would unpickle (and import prefect for).
        plain = {name: kwargs.pop(name) for name in list(kwargs) if name not in _MAY_HOLD_FUTURES}
        kwargs["packed"] = dask_pickle.dumps((per_run, plain))
        return payload, (_apply(apply), payload.future, (), kwargs), options


PAYLOAD_ONCE = PayloadOnce(
    runtime,
    "dask.payload-once",
    applies=">=0.3.0",
    why="Every run's Dask spec carries its Prefect Task and the serialized "
    "context (with the Flow and its DaskTaskRunner), about 64 KB once "
    "unpickled, and the scheduler keeps the messages it last sent to each "
    "worker: a scheduler shared by many flow runs grows with every run "
    "(upstream #21697). The Task and the context are sent once per flow run "
    "as a small Dask task of their own (not scattered: an adaptive cluster "
    "with no worker still scales up), each run's spec refers to it, and it is "
    "released once no unresolved run uses it. Run keys keep their prefix; "
    "the submit no longer tokenizes the whole call for a key.",
    **_WHERE,
)
