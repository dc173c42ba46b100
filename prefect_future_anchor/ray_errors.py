"""Whether a ready ObjectRef holds a Ray error, without fetching a successful value.

prefect-ray's remote call returns the run's Prefect State: a run that failed in
user code is a *value* (a Failed State).  A Ray error (the worker crashed, the
node died, out of memory, the object was lost, the call itself raised) means
the run's engine could not report.  Ray stores that error as an object whose
metadata is a number (its ``ErrorType``); a value's metadata is a type tag
(``PYTHON``, ``XLANG``, ``RAW``, ``ACTOR_HANDLE``).

:func:`failure` reads the metadata only: the value of a small ref is already in
the driver's in-memory store; a large one is looked at only if it is in this
node's object store (mapped zero-copy, nothing unpickled), never pulled from
another node.  Only an error is deserialized, with Ray's own deserializer.
Measured on Ray 2.39, 2.42, 2.47 and 2.59 (benchmarks/lab/ray_failure/RESULTS.md):
0 values unpickled and no RSS growth for a 150 MB result; worker crashed, task
raised, cancelled, out of memory and node died are recognised.  An error
object larger than 100 KiB that lives only on another node, and an object lost
before Ray tried to recover it, read as "no error" (the run is then left as
stock leaves it).

Under Ray Client the driver has no core worker (``'Worker' object has no
attribute 'core_worker'``): the same reader runs inside the cluster, in the
probe actor of :mod:`prefect_future_anchor.ray_client`, which borrows the refs
it watches (a borrower's in-memory store holds a small value or error once the
ref is ready, and an ``OBJECT_IN_PLASMA`` marker for a large one).

Private Ray API (checked by :func:`shape_problem`): ``CoreWorker.object_exists``,
``CoreWorker.get_objects`` (Ray <= 2.41 takes a ``current_task_id`` too),
``Worker.deserialize_objects``.
"""

from __future__ import annotations

from typing import Any, Callable, List, Optional

#: ErrorType numbers (ray/core/generated/common.proto), the same on every supported Ray
_OBJECT_IN_PLASMA = 4  # a marker in the in-memory store, never a final value
_TASK_EXECUTION_EXCEPTION = 3


def _reader() -> Callable[[Any], Optional[BaseException]]:
    """The metadata reader, self-contained (nothing of this package, only Ray and
    builtins) so that cloudpickle ships it by value: under Ray Client it runs inside
    the cluster (:mod:`prefect_future_anchor.ray_client`), whose workers need not
    have this package installed."""
    in_plasma, task_exception = _OBJECT_IN_PLASMA, _TASK_EXECUTION_EXCEPTION

    def get_objects(core_worker: Any) -> Callable[[List[Any], int], List[Any]]:
        get = core_worker.get_objects
        first_line = ((getattr(type(core_worker).get_objects, "__doc__", None) or "").splitlines() or [""])[0]
        if "current_task_id" in first_line:  # Ray <= 2.41
            task_id = core_worker.get_current_task_id()
            return lambda refs, timeout_ms: get(refs, task_id, timeout_ms)
        return lambda refs, timeout_ms: get(refs, timeout_ms)

    def error_type_of(metadata: Any) -> Optional[int]:
        if not metadata:
            return None
        head = bytes(metadata).split(b",", 1)[0]
        return int(head) if head.isdigit() else None

    def message_of(worker: Any, data: Any, metadata: Any, error_type: int) -> str:
        if error_type == task_exception or not data:
            return ""
        try:
            info = worker.get_serialization_context()._deserialize_error_info(data, bytes(metadata).split(b","))
            return str(info.error_message or "")
        except Exception:
            return ""

    def read(ref: Any) -> Optional[BaseException]:
        from ray._private import worker as worker_module

        worker: Any = worker_module.global_worker
        core_worker = worker.core_worker
        if not core_worker.object_exists(ref, memory_store_only=True) and not core_worker.object_exists(ref):
            return None  # on another node, or spilled: not pulled here
        entries = get_objects(core_worker)([ref], 0)
        entry = entries[0]
        data, metadata = entry[0], entry[1]
        error_type = error_type_of(metadata)
        if error_type is None or error_type == in_plasma:
            del data, entry, entries  # a value: let go of the (zero-copy) buffer now
            return None
        message = message_of(worker, data, metadata, error_type)
        try:
            error = worker.deserialize_objects([entry], [ref])[0]
        except Exception as exc:
            error, message = None, message or repr(exc)
        if isinstance(error, BaseException):
            if message and message not in str(error):
                try:  # the worker / node ids Ray gives for this error
                    error.__notes__ = list(getattr(error, "__notes__", None) or ()) + [message]
                except Exception:
                    pass
            return error
        try:
            from ray.core.generated.common_pb2 import ErrorType

            name = ErrorType.Name(error_type)
        except Exception:
            name = f"Ray ErrorType {error_type}"
        return RuntimeError(f"{name}: {message}" if message else name)

    return read


#: reads a ref of this process's own core worker (a driver, or a worker inside the cluster)
read = _reader()


def cancelled(error: BaseException) -> bool:
    """A cancellation (``ray.cancel``), not a death."""
    try:
        from ray.exceptions import TaskCancelledError

        return isinstance(error, TaskCancelledError)
    except ImportError:  # pragma: no cover
        return False


def shape_problem() -> Optional[str]:
    """Why the installed Ray does not offer what :func:`failure` reads, or None."""
    try:
        from ray import _raylet
        from ray._private import worker as worker_module
        from ray._private import ray_constants
        from ray.core.generated.common_pb2 import ErrorType
    except Exception as exc:
        return f"Ray's internals cannot be imported ({exc})"
    core_worker = getattr(_raylet, "CoreWorker", None)
    for name in ("object_exists", "get_objects", "get_current_task_id"):
        if not callable(getattr(core_worker, name, None)):
            return f"ray._raylet.CoreWorker has no {name}"
    first = ((core_worker.object_exists.__doc__ or "").splitlines() or [""])[0]  # type: ignore[union-attr]
    if "memory_store_only" not in first:
        return f"CoreWorker.object_exists has changed: {first!r}"
    first = ((core_worker.get_objects.__doc__ or "").splitlines() or [""])[0]  # type: ignore[union-attr]
    if "timeout_ms" not in first:
        return f"CoreWorker.get_objects has changed: {first!r}"
    if not callable(getattr(worker_module.Worker, "deserialize_objects", None)):
        return "ray Worker has no deserialize_objects"
    for name, number in (("WORKER_DIED", 0), ("TASK_EXECUTION_EXCEPTION", 3), ("OBJECT_IN_PLASMA", 4)):
        if ErrorType.Value(name) != number:
            return f"Ray's ErrorType.{name} is no longer {number}"
    for attribute in (
        "OBJECT_METADATA_TYPE_PYTHON",
        "OBJECT_METADATA_TYPE_CROSS_LANGUAGE",
        "OBJECT_METADATA_TYPE_RAW",
        "OBJECT_METADATA_TYPE_ACTOR_HANDLE",
    ):
        if getattr(ray_constants, attribute, b"0")[:1].isdigit():
            return f"ray_constants.{attribute} is missing or numeric"
    return None
