"""A submit's serialized settings, made once per settings state instead of once per submit.

Every ``DaskTaskRunner`` / ``RayTaskRunner`` submit calls
``prefect.context.serialize_context()`` and ships the result with the run.
About nine tenths of that call (16-17 ms of a 23 ms submit on prefect 3.9.1,
12 ms on 3.3.7) is ``SettingsContext.serialize()``: a ``model_dump`` of the
whole ``Settings`` tree (and, from 3.5, a walk over it turning ``Setting`` and
``Path`` objects into strings), identical for every submit made under the same
settings.  The flow-run, task-run, tags and asset parts and the deployment
variables cost well under a millisecond together and are built per submit by
the stock function, untouched.

:func:`reusing` wraps the stock ``serialize_context`` a runner module imported:
around the stock call, the current ``SettingsContext`` is replaced, for this
thread only, by a copy of it (same ``profile``, same ``settings`` objects)
whose ``serialize()`` answers from :class:`SettingsPayloads`.  The stock
function reads nothing else from it.

What invalidates a cached payload: it is keyed by the pickled bytes of the
context's ``profile`` and ``settings``, taken at every submit, so any change
of what the serialization is made of gives another key: a new context
(``temporary_settings``, ``use_profile``, a settings context a task run
enters on a worker), and an assignment to a field of the live ``Settings`` or
``Profile`` object in place (which an identity key would miss).  Equal bytes
mean equal state; a pickle that differs for equal state (a set built in
another order) only costs a miss.  Each submit gets its own copy of the
payload (unpickled from the cache), so nothing downstream shares it.
"""

from __future__ import annotations

import collections
import pickle
import threading
from typing import Any, Callable, Optional

from . import guard

#: How many settings states are remembered (a flow rarely uses more than a few:
#: its own settings and one per ``temporary_settings`` block it submits in).
SIZE = 16


class SettingsPayloads:
    """``SettingsContext.serialize()`` results, keyed by the context's pickled state."""

    def __init__(self, size: int = SIZE) -> None:
        self._size = size
        self._entries: "collections.OrderedDict[bytes, bytes]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(settings_context: Any) -> bytes:
        return pickle.dumps((settings_context.profile, settings_context.settings), protocol=pickle.HIGHEST_PROTOCOL)

    def serialized(self, settings_context: Any) -> dict:
        """A fresh copy of ``settings_context.serialize()`` for its current state."""
        key = self.key(settings_context)
        with self._lock:
            payload = self._entries.get(key)
            if payload is not None:
                self._entries.move_to_end(key)
                self.hits += 1
        if payload is None:
            payload = pickle.dumps(settings_context.serialize(), protocol=pickle.HIGHEST_PROTOCOL)
            with self._lock:
                self.misses += 1
                self._entries[key] = payload
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return pickle.loads(payload)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


payloads = SettingsPayloads()

_served_class: Optional[type] = None


def _served(settings_context: Any, serialized: dict) -> Any:
    """A ``SettingsContext`` equal to ``settings_context`` whose ``serialize()``
    (the stock call's only use of it) returns ``serialized``."""
    global _served_class
    if _served_class is None:
        from prefect.context import SettingsContext
        from pydantic import PrivateAttr

        class ServedSettingsContext(SettingsContext):
            _served: Optional[dict] = PrivateAttr(None)

            def serialize(self, include_secrets: bool = True) -> dict:
                if include_secrets is not True or self._served is None:
                    return SettingsContext.serialize(self, include_secrets=include_secrets)
                return self._served

        _served_class = ServedSettingsContext
    served = _served_class.model_construct(profile=settings_context.profile, settings=settings_context.settings)
    served._served = serialized
    return served


def reusing(stock: Callable[..., dict], where: str, enabled: Callable[[], bool]) -> Callable[..., dict]:
    """``stock`` (a runner module's ``serialize_context``) with the settings part
    served from :data:`payloads` while ``enabled()``; on any failure of the
    shim's own, the stock call as it is (logged once under ``where``)."""

    def serialize_context(*args: Any, **kwargs: Any) -> dict:
        if not enabled():
            return stock(*args, **kwargs)
        try:
            from prefect.context import SettingsContext

            current = SettingsContext.get()
            if current is None:
                return stock(*args, **kwargs)
            var = SettingsContext.__var__
            token = var.set(_served(current, payloads.serialized(current)))
        except Exception as exc:
            guard.failed(where, exc)
            return stock(*args, **kwargs)
        try:
            return stock(*args, **kwargs)
        finally:
            var.reset(token)

    serialize_context.__wrapped__ = stock  # type: ignore[attr-defined]
    serialize_context.__doc__ = stock.__doc__
    return serialize_context
