"""Tasks and a flow for ``<runner>.plain-walk``, in a plain module the Dask and Ray workers can import.

``walked`` submits ``consume`` with each kind of parameter twice, the patch
switched off (stock: the control) then on.  Some elements are the very
objects an earlier run returned: ``produce``, called in the flow's process,
returns a list whose items Prefect links to its run by ``id()``; ``BIG`` is a
module global it returns (the same object wherever this module is used);
``"plain_walk_word"`` is an identifier-like literal, interned, so the flow's
literal is the object ``produce`` returned; a subflow's result is linked to
the subflow's run.  On prefect 3.4+ ``produce`` materializes an asset, so a
consumer whose recorded inputs name it sees that asset upstream on its worker
(the only place prefect-ray 0.5+ uses the inputs it collects in the driver).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from prefect import flow, task

BIG = 10**6 + 1
ASSET = "file:///plain-walk/produced"


class Word(str):
    """Not an exact str: a parameter holding one is walked by the stock code."""


def describe(value: Any) -> Any:
    """The value with every container's exact type: what the task received, comparably."""
    kind = type(value).__name__
    if isinstance(value, dict):
        return [kind, [[describe(k), describe(v)] for k, v in value.items()]]
    if isinstance(value, (set, frozenset)):
        return [kind, sorted((describe(v) for v in value), key=repr)]
    if isinstance(value, (list, tuple)):
        return [kind, [describe(v) for v in value]]
    return [kind, repr(value)]


def _own_run_id() -> str:
    from prefect.context import TaskRunContext

    return str(TaskRunContext.get().task_run.id)


def _produce() -> List[Any]:
    return ["produced-" + "string", BIG, [1000, 2000], ("t", 3000), "plain_walk_word", 7, _own_run_id()]


try:
    from prefect.assets import materialize
except ImportError:  # prefect < 3.4: no assets
    produce = task(persist_result=False, name="produce")(_produce)
else:
    produce = materialize(ASSET, persist_result=False, name="produce")(_produce)


@flow(persist_result=False)
def produce_flow() -> List[Any]:
    return ["made-by-a-" + "subflow", 12345]


@task(persist_result=False)
def number(n: int) -> int:
    return n


@task(persist_result=False)
def consume(xs: Any, ys: Any = None) -> Dict[str, Any]:
    try:
        from prefect.context import AssetContext
    except ImportError:
        upstream = None
    else:
        current = AssetContext.get()
        upstream = sorted(asset.key for asset in current.upstream_assets) if current else None
    return {"xs": describe(xs), "ys": describe(ys), "upstream_assets": upstream}


def nested(depth: int, leaf: Any) -> Any:
    value: Any = [leaf]
    for _ in range(depth):
        value = [value]
    return value


def cases(made: List[Any], by_flow: List[Any], early: Any) -> Dict[str, Dict[str, Any]]:
    """Each kind of parameter, by name: ``consume``'s keyword arguments."""
    from prefect import allow_failure
    from prefect.utilities.annotations import quote

    shared = [9000, made[0]]
    return {
        "flat list": {"xs": list(range(1000, 1040)) + ["a", "b"]},
        "linked elements": {"xs": [1, made[0], 2, BIG], "ys": [3.5, made[6]]},
        "linked containers": {"xs": made, "ys": made[2]},
        "interned word": {"xs": ["plain_walk_word", 3]},
        "nested dict": {"xs": {"a": [1, (2, made[0])], "b": {BIG}, made[0]: "key"}},
        "tuple and set": {"xs": (4000, 5000), "ys": {6000, "x"}},
        "subflow result": {"xs": [by_flow[0], 11]},
        "primitives": {"xs": [True, None, 1.5, b"bytes", 7, False], "ys": ""},
        "empty": {"xs": [], "ys": {}},
        "future in a list": {"xs": [early, 7000], "ys": [1, 2, made[0]]},
        "allow_failure": {"xs": allow_failure(early), "ys": [BIG]},
        "quote": {"xs": quote([made[0], 8000]), "ys": list(range(1000, 1100))},
        "long list beside a future": {"xs": list(range(20_000)), "ys": early},
        "shared list": {"xs": shared, "ys": [shared, 1]},
        "deep nesting": {"xs": nested(40, made[0]), "ys": nested(40, 5)},
        "str subclass": {"xs": [Word("w"), 1]},
    }


def _switch(patch_name: str, on: bool) -> None:
    from prefect_future_anchor import registry

    next(p for p in registry.PATCHES if p.name == patch_name).switch(on)


@flow(persist_result=False)
def walked(patch_name: str) -> Dict[str, Any]:
    """Each case submitted stock (the patch off) then patched: the run ids and
    what each run received, what was sent, ``produce``'s run id."""
    made = produce()
    by_flow = produce_flow()
    early = number.submit(5)
    futures, sent = {}, {}
    for name, kwargs in cases(made, by_flow, early).items():
        sent[name] = {"xs": describe(kwargs["xs"]), "ys": describe(kwargs.get("ys"))}
        for side in ("stock", "patched"):
            _switch(patch_name, side == "patched")
            try:
                futures[name, side] = consume.submit(**kwargs)
            finally:
                _switch(patch_name, True)
    runs = {key: (future.task_run_id, future.result()) for key, future in futures.items()}
    return {"runs": runs, "sent": sent, "produce": made[6], "early": early.task_run_id, "linked": linked(made[0])}


def linked(value: Any) -> bool:
    """Whether Prefect finds ``value``'s run by its ``id()`` (prefect 3.0.x keeps
    the links in a WeakValueDictionary of state copies nothing else holds: they
    are gone at once, and stock records no such input there)."""
    from prefect.utilities.engine import get_state_for_result

    return get_state_for_result(value) is not None
