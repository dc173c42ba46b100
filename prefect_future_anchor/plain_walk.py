"""A submit's parameters of plain data, checked in one tight pass instead of walked by ``visit_collection``.

Every ``DaskTaskRunner`` / ``RayTaskRunner`` submit walks its parameters
element by element with ``prefect.utilities.collections.visit_collection``, a
few Python calls per element: once to swap Prefect futures for the runner's
own (``_optimize_futures``, ``_exchange_prefect_for_ray_futures``) and once
per parameter to collect the run's inputs (``collect_task_run_inputs_sync``:
in ``PrefectDaskClient.submit``, and in ``RayTaskRunner.submit`` from
prefect-ray 0.4.5).  A 20,000-element list makes a submit 89% those walks.

What is plain: containers of the exact types list, tuple, set and dict (no
subclass), nested at most :data:`MAX_DEPTH` deep, no container object met
twice (a shared or self-containing one goes to stock), whose leaves are of the
exact types int, float, str, bytes, bool or None.  Such a walk cannot meet a
future, a ``State``, an annotation (``quote``, ``allow_failure``), a dataclass
or a model.  What the stock walks give for it (read in prefect 3.0.0, 3.2.0,
3.3.7, 3.4.7, 3.5.0 and 3.9.1; prefect-dask 0.3.0, 0.3.5, 0.3.7; prefect-ray
0.4.0, 0.4.4, 0.4.5, 0.5.0, 0.6.0):

- ``visit_collection(..., return_data=True)`` rebuilds a collection only when
  the visitor changed an item; the runners' visitors change only futures, so
  the result is the value itself (and the Ray walk lists no upstream ref).
- ``collect_task_run_inputs_sync`` records an input for a future, a ``State``,
  or an object whose ``id()`` is a key of the flow run's results
  (``get_state_for_result``: ``FlowRunContext.task_run_results`` up to 3.4.6,
  a ``WeakValueDictionary`` in 3.0.x, ``run_results`` from 3.4.7), for the
  containers as well as the leaves.  An
  element that is the very object an earlier task returned (small ints and
  interned strings are shared objects) records that task as an input.  The
  pass looks every visited object's ``id()`` up in the same mapping; when any
  is there, the stock call runs and records what it records (3.9.1's eviction
  of a stale entry included); when none is, stock records nothing: ``set()``.

Anything else (not plain, a ``max_depth`` of its own, a future class that
plain types derive from) is the stock call as it is; a dict of parameters
whose values are partly plain goes to stock with only the other values (the
plain ones are returned as they are, as the stock walk returns them).
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Callable, Dict, Optional

from . import guard

#: How many calls the pass answered, by kind ("swap", "collect"); the others ran the stock code.
answered: "collections.Counter[str]" = collections.Counter()

#: Deeper nesting goes to stock (whose recursion is the limit there, not this pass's).
MAX_DEPTH = 32

_LEAVES = frozenset((int, float, str, bytes, bool, type(None)))
_CONTAINERS = frozenset((list, tuple, set, dict))
_PLAIN = _LEAVES | _CONTAINERS

#: A plain value with none of its objects among the flow run's results.
UNLINKED = 0
#: A plain value with at least one of its objects among the flow run's results.
LINKED = 1


def scan(value: Any, results: Optional[Dict[int, Any]] = None) -> Optional[int]:
    """None if ``value`` is not plain; else :data:`LINKED` if the ``id()`` of
    ``value`` or of anything in it is a key of ``results``, :data:`UNLINKED` if
    not (``results`` None or empty: no look-up).  Stops at the first link."""
    kind = type(value)
    if results and id(value) in results:
        return LINKED if kind in _PLAIN else None
    if kind in _LEAVES:
        return UNLINKED
    if kind not in _CONTAINERS:
        return None
    return _container(value, 0, results or None, set())


def _container(value: Any, depth: int, results: Optional[Dict[int, Any]], seen: set) -> Optional[int]:
    if depth >= MAX_DEPTH or id(value) in seen:
        return None
    seen.add(id(value))
    parts = (value.keys(), value.values()) if type(value) is dict else (value,)
    for part in parts:
        kinds = set(map(type, part))
        if not kinds <= _LEAVES:
            if not kinds <= _PLAIN:
                return None
            for item in part:
                if type(item) in _CONTAINERS:
                    found = _container(item, depth + 1, results, seen)
                    if found is None:
                        return None
                    if found == LINKED:
                        return LINKED
        if results is not None and not results.keys().isdisjoint(map(id, part)):
            return LINKED
    return UNLINKED


def _results(flow_run_context: Any, attribute: str) -> Optional[Dict[int, Any]]:
    """The keys of the flow run's results mapping ``get_state_for_result`` reads,
    as a dict (None outside a flow run).  prefect 3.0.x keeps it in a
    ``WeakValueDictionary``: its ``data`` dict holds every live key (and perhaps
    keys whose state is gone, which only send a value to the stock code)."""
    current = flow_run_context.get()
    if current is None:
        return None
    results = getattr(current, attribute)
    if type(results) is dict:
        return results
    if type(results) is weakref.WeakValueDictionary and type(getattr(results, "data", None)) is dict:
        return results.data
    raise TypeError(f"FlowRunContext.{attribute} is a {type(results).__name__}, not a dict")


_unaffected_by: Dict[Any, bool] = {}


def _unaffected(future_cls: Any) -> bool:
    """Whether no plain type is a ``future_cls`` (then a plain walk meets no future)."""
    found = _unaffected_by.get(future_cls)
    if found is None:
        found = isinstance(future_cls, type) and not any(issubclass(t, future_cls) for t in _PLAIN)
        _unaffected_by[future_cls] = found
    return found


def collecting(
    stock: Callable[..., Any], where: str, enabled: Callable[[], bool], flow_run_context: Any, attribute: str
) -> Callable[..., Any]:
    """``stock`` (``collect_task_run_inputs_sync`` as a runner module imported it)
    answering ``set()`` for a plain value none of whose objects is among the
    flow run's results; every other call is the stock call."""
    defaults = stock.__defaults__ or ()

    def collect_task_run_inputs_sync(*args: Any, **kwargs: Any) -> Any:
        if not enabled():
            return stock(*args, **kwargs)
        try:
            if len(args) != 1 or not set(kwargs) <= {"future_cls", "max_depth"} or len(defaults) != 2:
                return stock(*args, **kwargs)
            future_cls = kwargs.get("future_cls", defaults[0])
            max_depth = kwargs.get("max_depth", defaults[1])
            if type(max_depth) is not int or max_depth >= 0 or not _unaffected(future_cls):
                return stock(*args, **kwargs)
            found = scan(args[0], _results(flow_run_context, attribute))
        except Exception as exc:
            guard.failed(where, exc)
            return stock(*args, **kwargs)
        if found == UNLINKED:
            answered["collect"] += 1
            return set()
        return stock(*args, **kwargs)

    collect_task_run_inputs_sync.__wrapped__ = stock  # type: ignore[attr-defined]
    collect_task_run_inputs_sync.__doc__ = stock.__doc__
    return collect_task_run_inputs_sync


def _split(expr: Any) -> Any:
    """``True`` if ``expr`` is plain; for a dict of which only some values are
    plain, the dict of the others (in order); else None (all to stock).

    A dict's values are scanned one by one: whatever a plain value holds is
    plain, and a stock walk gives a plain container back as itself whether or
    not it met it before (its ``_seen``), so walking the other values alone
    gives what walking them all gives."""
    if type(expr) is not dict:
        return True if scan(expr) is not None else None
    rest = {}
    for key, value in expr.items():
        if scan(key) is None:
            return None
        if scan(value) is None:
            rest[key] = value
    if not rest:
        return True
    return rest if len(rest) < len(expr) else None


def _merged(expr: dict, rest: dict, walked: dict) -> dict:
    """``expr`` with the walked values of ``rest`` (the stock walk rebuilds a
    dict when a value changed, keys and order kept); ``expr`` itself if none did."""
    if walked is rest or all(walked[key] is value for key, value in rest.items()):
        return expr
    return {key: walked[key] if key in rest else value for key, value in expr.items()}


def swapping(where: str, enabled: Callable[[], bool], lists_refs: bool) -> Callable[..., Any]:
    """A wrapt wrapper for the runner's future-swapping walk (``_optimize_futures``:
    returns the value; ``lists_refs``, ``_exchange_prefect_for_ray_futures``:
    returns the value and the upstream refs it met).  Plain values are returned
    as they are (with no ref); a dict of which only some values are plain has
    only the others walked by the stock method."""

    def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        if not enabled() or kwargs or len(args) != 1:
            return wrapped(*args, **kwargs)
        expr = args[0]
        try:
            split = _split(expr)
        except Exception as exc:
            guard.failed(where, exc)
            return wrapped(*args, **kwargs)
        if split is None:
            return wrapped(*args, **kwargs)
        answered["swap"] += 1
        if split is True:
            return (expr, []) if lists_refs else expr
        if lists_refs:
            walked, refs = wrapped(split)
            return _merged(expr, split, walked), refs
        return _merged(expr, split, wrapped(split))

    return wrapper
