"""Ray Client (``RayTaskRunner(address="ray://host:10001")``): completion and crash
causes learnt inside the cluster.

Under Ray Client the flow process is no Ray driver: ``ray.*`` calls go over gRPC
to the cluster's client server, which makes them on the client's behalf.  Two of
the shim's means break there (read in ``ray/util/client/worker.py`` and
``server/server.py``, Ray 2.47 and 2.59):

- ``ray.wait`` accepts ``fetch_local`` and drops it: the request carries ids,
  ``num_returns`` and ``timeout`` only, and the server calls ``ray.wait`` with the
  default ``fetch_local=True``, so each call asks the cluster to pull every listed
  result over 100 KiB to the head node, and ships every listed id both ways;
- the client's worker has no ``core_worker``: :func:`ray_errors.read` cannot read
  an error's metadata here.

:func:`probe` answers both with one small actor on the head node (``num_cpus=0``):
it borrows the refs it is sent once (nested in a list, so Ray passes them
unresolved), runs ``ray.wait(fetch_local=False)`` over them inside the cluster
where the flag is honoured, and for each ref it finds ready reads the error, if
any, with the same metadata reader as a driver (:func:`ray_errors._reader`), as a
borrower: a small value or error is in its in-memory store, a large value is a
marker and is never pulled.  Each call ships only the refs it has not sent before
and brings back only the ids that became ready (and their errors).  The actor's
class and the reader are local functions, so cloudpickle ships them by value:
the cluster needs Ray only, not this package.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Optional, Set

#: Longest one call of the actor may take beyond its own wait (a loaded head).
CALL_TIMEOUT = 120.0


def connected() -> bool:
    """Whether this process talks to Ray through Ray Client (imports nothing:
    False while Ray is not imported)."""
    client = sys.modules.get("ray.util.client")
    if client is None:
        return False
    try:
        return bool(client.ray.is_connected())
    except Exception:
        return False


def _session() -> Any:
    """What identifies the current Client connection (a new ``ray.init`` is a new one)."""
    worker = sys.modules["ray.util.client"].ray.get_context().client_worker
    return getattr(worker, "_client_id", None) or id(worker)


def _sentinel_class(read: Any) -> type:
    """The actor class, built here so that it and ``read`` pickle by value."""

    class Sentinel:
        """Borrows the refs it is sent until they are ready, then lets go of them."""

        def __init__(self) -> None:
            self.pending: Dict[bytes, Any] = {}

        def poll(self, new: List[List[Any]], timeout: float) -> Any:
            import pickle

            import ray

            for ref in new[0]:
                self.pending.setdefault(ref.binary(), ref)
            refs = list(self.pending.values())
            if not refs:
                return [], {}
            ready, rest = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
            if ready and rest:
                more, _rest = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
                ready = ready + more
            ids: List[bytes] = []
            errors: Dict[bytes, BaseException] = {}
            for ref in ready:
                key = ref.binary()
                self.pending.pop(key, None)
                ids.append(key)
                try:
                    error = read(ref)
                except Exception as exc:
                    error = RuntimeError(f"the cluster-side reader failed: {exc!r}")
                if error is not None:
                    try:
                        pickle.loads(pickle.dumps(error))
                    except Exception:
                        error = RuntimeError(f"{type(error).__name__}: {error}")
                    errors[key] = error
            del refs, ready
            return ids, errors

        def forget(self) -> int:
            count = len(self.pending)
            self.pending.clear()
            return count

    return Sentinel


class Probe:
    """The client side: which refs the actor borrows, which it reported ready
    that no call has handed out yet, and the errors found for them.

    An error is kept until the call after the one that handed its ref out: the
    watcher asks :meth:`failure` in the callbacks of the round that found the ref
    ready, before its next probe.  A run nobody asks about (cancelled by the
    shim, or final states off) leaves nothing behind, however long the
    connection lives."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._session: Any = None
        self._actor: Any = None
        self._sent: Set[bytes] = set()
        self._ready: Set[bytes] = set()
        self._errors: Dict[bytes, BaseException] = {}
        self._handed: Set[bytes] = set()  # handed out by the last call
        self.handed_out = 0
        self.calls = 0  # actor calls made (for the benchmarks)
        self.shipped = 0  # refs sent to the actor, in all
        self.problem: Optional[str] = None

    def _fresh(self) -> None:
        session = _session()
        if session == self._session and self._actor is not None:
            return
        import ray

        from . import ray_errors

        self._sent.clear()
        self._ready.clear()
        self._errors.clear()
        self._handed.clear()
        self.handed_out = 0
        self._actor = None
        self._session = session
        try:
            options: Dict[str, Any] = dict(num_cpus=0, max_restarts=0, max_concurrency=1)
            options["resources"] = {"node:__internal_head__": 0.001}  # lives as long as the cluster
            sentinel = ray.remote(**options)(_sentinel_class(ray_errors._reader()))
            self._actor = sentinel.remote()
        except Exception as exc:
            self.problem = f"the probe actor could not be created under Ray Client ({type(exc).__name__}: {exc})"
            raise

    def __call__(self, refs: List[Any], timeout: float) -> List[Any]:
        import ray

        with self._lock:
            self._fresh()
            for key in self._handed:
                self._errors.pop(key, None)
            self._handed.clear()
            new = []
            for ref in refs:
                key = ref.binary()
                if key not in self._sent and key not in self._ready:
                    self._sent.add(key)
                    new.append(ref)
            # ready ids waiting for another chunk: answer now rather than block
            wait = 0.0 if self._ready else timeout
            try:
                ids, errors = ray.get(self._actor.poll.remote([new], wait), timeout=wait + CALL_TIMEOUT)
            except Exception as exc:
                self.problem = f"the probe actor failed under Ray Client ({type(exc).__name__}: {exc})"
                self._sent.difference_update(ref.binary() for ref in new)
                raise
            self.calls += 1
            self.shipped += len(new)
            self._sent.difference_update(ids)
            self._ready.update(ids)
            self._errors.update(errors)
            out = [ref for ref in refs if ref.binary() in self._ready]
            self._handed = {ref.binary() for ref in out}
            self._ready.difference_update(self._handed)
            self.handed_out += len(out)
            return out

    def failure(self, ref: Any) -> Optional[BaseException]:
        with self._lock:
            if self._session is None or self.handed_out == 0:
                raise RuntimeError(
                    "under Ray Client crash causes are read by ray_client.probe, which has not reported this run"
                )
            return self._errors.pop(ref.binary(), None)

    def reset(self) -> None:
        """Forget every ref (the watcher let go of them): the actor stops borrowing them."""
        with self._lock:
            actor, self._actor, self._session = self._actor, None, None
            self._sent.clear()
            self._ready.clear()
            self._errors.clear()
            self._handed.clear()
        if actor is not None and connected():
            try:
                import ray

                ray.kill(actor)
            except Exception:
                pass


_probe = Probe()


def probe(refs: List[Any], timeout: float) -> List[Any]:
    """The subset of ``refs`` that is ready, learnt inside the cluster: nothing is
    fetched to the client or pulled to the head, and only refs not sent before are
    shipped.  Blocks up to ``timeout`` when nothing is ready.  Raises if the actor
    cannot be reached (the caller's guard then lets go of its runs, as stock)."""
    return _probe(refs, timeout)


def failure(ref: Any) -> Optional[BaseException]:
    """The Ray error found inside the cluster for a ref :func:`probe` reported
    ready (None for a value); raises if :func:`probe` never reported a run in this
    connection (the watcher is not using it, so nothing here is known)."""
    return _probe.failure(ref)


def reset() -> None:
    _probe.reset()


def final_states_problem() -> Optional[str]:
    """None if crash causes can be read without fetching under the current
    connection, else why not (the skip reason of ``ray.final-states``).  A driver:
    :func:`ray_errors.shape_problem` decides.  Under Ray Client: the same check
    (the cluster runs the client's Ray version, Ray Client refuses another), and
    whether the probe actor has failed; it assumes the watcher uses :func:`probe`."""
    from . import ray_errors

    if not connected():
        return None
    if _probe.problem is not None:
        return _probe.problem
    return ray_errors.shape_problem()
