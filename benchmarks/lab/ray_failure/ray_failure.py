"""Tell whether a *ready* Ray ObjectRef holds a Ray error, without unpickling a successful value.

Research prototype (not part of the package). Verified on Ray 2.39.0, 2.42.1, 2.47.0, 2.59.0 by probe.py.

How it works (per ref, in the driver = the ref's owner):
  1. ``core_worker.object_exists(ref, memory_store_only=True)`` -- True when the value sits in the owner's
     in-process memory store (small inline return value, or an error object the owner wrote itself:
     WORKER_DIED, TASK_CANCELLED, NODE_DIED, OUT_OF_MEMORY, ... and small RayTaskErrors). Those bytes are
     already in the driver's heap; nothing is fetched.
  2. otherwise the memory store holds only the OBJECT_IN_PLASMA marker; ``core_worker.object_exists(ref)``
     (plasma ``Contains`` over the local IPC socket, no fetch) tells whether the local node's plasma store has
     it. If not (remote node, or spilled to disk) we do NOT get it: we return None (see ``REMOTE_UNKNOWN``).
  3. ``core_worker.get_objects([ref], timeout_ms=0)`` returns ``(data, metadata[, transport])``; for a plasma
     object ``data`` is a zero-copy view of the shared-memory segment. Only ``metadata`` is read:
       - first comma-separated field is an integer -> an ``rpc::ErrorType`` -> error;
       - ``b"PYTHON"``, ``b"XLANG"``, ``b"RAW"``, ``b"ACTOR_HANDLE"`` -> a value -> return None.
  4. Only for an error: ``worker.deserialize_objects([pair], [ref])`` (Ray's own ``_deserialize_object``: it
     unpickles nothing but RayTaskError's pickled cause), plus the RayErrorInfo protobuf for its message
     (worker id, node id, exit detail), which ``WorkerCrashedError()`` drops.
"""

from typing import Any, Callable, List, Optional, Tuple, Union

__all__ = ["ray_failure", "ray_failure_shape_ok", "RAY_FAILURE_PRIVATE_API"]

# what the function touches that is not public Ray API (checked by ray_failure_shape_ok)
RAY_FAILURE_PRIVATE_API = (
    "ray._private.worker.global_worker.core_worker.object_exists(ref, memory_store_only=...)",
    "ray._private.worker.global_worker.core_worker.get_objects(refs[, current_task_id], timeout_ms)",
    "ray._private.worker.global_worker.deserialize_objects(pairs, refs)",
    "ray._private.worker.global_worker.get_serialization_context()._deserialize_error_info(data, fields)",
    "ray.core.generated.common_pb2.ErrorType",
)

_OBJECT_IN_PLASMA = 4  # rpc::ErrorType.OBJECT_IN_PLASMA: a marker, never a final value
_TASK_EXECUTION_EXCEPTION = 3


def _get_objects_fn(core_worker: Any) -> Callable[[List[Any], int], List[Any]]:
    """``core_worker.get_objects`` with the per-version signature hidden.

    Ray <= 2.41: ``get_objects(self, object_refs, TaskID current_task_id, int64_t timeout_ms=-1)``
    Ray >= 2.42: ``get_objects(self, object_refs, int64_t timeout_ms=-1)``
    (read from the Cython embedded signature, first line of ``__doc__``).
    """
    get_objects = core_worker.get_objects
    doc = (getattr(type(core_worker).get_objects, "__doc__", None) or "").splitlines()
    if doc and "current_task_id" in doc[0]:
        task_id = core_worker.get_current_task_id()
        return lambda refs, timeout_ms: get_objects(refs, task_id, timeout_ms)
    return lambda refs, timeout_ms: get_objects(refs, timeout_ms)


def _error_type(metadata: Optional[bytes]) -> Optional[int]:
    """The ErrorType number encoded in an object's metadata, or None for a value."""
    if not metadata:
        return None
    head = bytes(metadata).split(b",", 1)[0]
    if not head.isdigit():  # b"PYTHON", b"XLANG", b"RAW", b"ACTOR_HANDLE"
        return None
    return int(head)


def _error_message(worker: Any, data: Any, metadata: bytes, error_type: int) -> str:
    """RayErrorInfo.error_message carried in the error object's data (empty string if none)."""
    if error_type == _TASK_EXECUTION_EXCEPTION or not data:
        return ""
    try:
        ctx = worker.get_serialization_context()
        info = ctx._deserialize_error_info(data, bytes(metadata).split(b","))
        return str(info.error_message or "")
    except Exception:  # noqa: BLE001 - message is best effort
        return ""


def ray_failure(ref: Any) -> Optional[Union[BaseException, str]]:
    """For a ref that ``ray.wait`` reported ready: the Ray error it holds, or None for a value.

    Never unpickles a successful value and never copies it into the driver's heap. Returns None too when
    the object is only on another node or spilled (it is not pulled: see module docstring), and a ``str``
    when the error could be detected but not rebuilt.
    """
    from ray._private import worker as _worker_mod

    worker = _worker_mod.global_worker
    core_worker = worker.core_worker
    if not core_worker.object_exists(ref, memory_store_only=True):
        # In plasma (value > max_direct_call_object_size, 100 KiB by default).
        if not core_worker.object_exists(ref):
            return None  # REMOTE_UNKNOWN: primary copy on another node, or spilled; not fetched
    try:
        pairs = _get_objects_fn(core_worker)([ref], 0)
    except Exception as exc:  # noqa: BLE001 - e.g. GetTimeoutError if it vanished meanwhile
        return None if "Timed out" in str(exc) or "timed out" in str(exc) else f"get_objects failed: {exc!r}"
    entry = pairs[0]
    data, metadata = entry[0], entry[1]  # 2-tuple (<=2.47) or SerializedRayObject(data, metadata, transport)
    error_type = _error_type(metadata)
    if error_type is None or error_type == _OBJECT_IN_PLASMA:
        del data, entry, pairs  # release the plasma buffer now
        return None
    message = _error_message(worker, data, metadata, error_type)
    try:
        error = worker.deserialize_objects([entry], [ref])[0]
    except Exception as exc:  # noqa: BLE001
        error = None
        message = message or repr(exc)
    if isinstance(error, BaseException):
        if message and message not in str(error):
            # PEP 678 notes: printed by tracebacks on 3.11+, plain attribute on 3.9/3.10
            try:
                error.__notes__ = list(getattr(error, "__notes__", ()) or ()) + [message]
            except Exception:  # noqa: BLE001
                pass
        return error
    try:
        from ray.core.generated.common_pb2 import ErrorType

        name = ErrorType.Name(error_type)
    except Exception:  # noqa: BLE001
        name = f"ErrorType {error_type}"
    return f"{name}: {message}" if message else name


def ray_failure_shape_ok() -> Tuple[bool, str]:
    """Shape check for the private API above; call after ``ray.init()``."""
    try:
        import ray
        from ray._private import worker as _worker_mod
        from ray.core.generated.common_pb2 import ErrorType

        worker = _worker_mod.global_worker
        cw = worker.core_worker
        cls = type(cw)
        for name in ("object_exists", "get_objects", "get_current_task_id"):
            if not callable(getattr(cls, name, None)):
                return False, f"CoreWorker.{name} missing"
        doc0 = ((cls.object_exists.__doc__ or "").splitlines() or [""])[0]
        if "memory_store_only" not in doc0:
            return False, f"object_exists signature changed: {doc0!r}"
        doc0 = ((cls.get_objects.__doc__ or "").splitlines() or [""])[0]
        if "timeout_ms" not in doc0:
            return False, f"get_objects signature changed: {doc0!r}"
        if not callable(getattr(worker, "deserialize_objects", None)):
            return False, "Worker.deserialize_objects missing"
        ctx = worker.get_serialization_context()
        if not callable(getattr(ctx, "_deserialize_error_info", None)):
            return False, "SerializationContext._deserialize_error_info missing"
        for name, number in (("WORKER_DIED", 0), ("TASK_EXECUTION_EXCEPTION", 3), ("OBJECT_IN_PLASMA", 4),
                             ("TASK_CANCELLED", 5)):
            if ErrorType.Value(name) != number:
                return False, f"ErrorType.{name} != {number}"
        from ray._private import ray_constants as rc

        for attr in ("OBJECT_METADATA_TYPE_PYTHON", "OBJECT_METADATA_TYPE_CROSS_LANGUAGE",
                     "OBJECT_METADATA_TYPE_RAW", "OBJECT_METADATA_TYPE_ACTOR_HANDLE"):
            if getattr(rc, attr, b"0")[:1].isdigit():
                return False, f"{attr} looks numeric"
        # live round trip: a put object must read as a value, with no deserialization
        ref = ray.put(1)
        if ray_failure(ref) is not None:
            return False, "a put value read as an error"
        return True, f"ray {ray.__version__}"
    except Exception as exc:  # noqa: BLE001
        return False, repr(exc)
