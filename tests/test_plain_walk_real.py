"""``<runner>.plain-walk``: parameters of plain data are checked in one tight pass,
and every run records and receives what stock gives it.

In one flow run on the session's real cluster (``walk_tasks.walked``), each
kind of parameter (plain lists, dicts, tuples, sets, nested; elements that are
the very objects an earlier run returned; futures in lists, ``allow_failure``,
``quote``; a long list beside a future; shared and deeply nested containers)
is submitted twice: once with the patch switched off (the stock walks run:
the control) and once on.  The inputs each run recorded, read back through
the API, and the values it received must be equal field by field; the
comparison must not be vacuous (stock records the earlier run where an
element is its object, the pass answered the plain cases).

Then the pass on its own, against prefect's own ``collect_task_run_inputs_sync``
inside a real flow run, over many generated values with linked objects in
them; its shape limits (subclasses, cycles, shared containers, depth); and the
shim's own failure, which leaves the stock walks.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Dict, List

import pytest

import walk_tasks

from conftest import runners_available

RUNNERS = [r for r in ("dask", "ray") if r in runners_available()]

#: Cases made only of plain data: the patched side must not walk them with visit_collection.
PLAIN = (
    "flat list", "linked elements", "linked containers", "interned word", "nested dict",
    "tuple and set", "subflow result", "primitives", "empty", "shared list",
)


def _patch(kind: str):
    if kind == "dask":
        from prefect_future_anchor.dask_runner import PLAIN_WALK
    else:
        from prefect_future_anchor.ray_runner import PLAIN_WALK
    return PLAIN_WALK


def _inputs(task_inputs: Dict[str, List[Any]]) -> Dict[str, List[str]]:
    return {key: sorted(json.dumps(i.model_dump(mode="json"), sort_keys=True) for i in value) for key, value in task_inputs.items()}


def recorded(task_run_ids: List[Any], limit: float = 180) -> Dict[str, Dict[str, List[str]]]:
    """Each run's ``task_inputs`` as the API stores them, once the API has its
    final state (a bounded poll of the server: the recorder stores runs late)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    found: Dict[str, Dict[str, List[str]]] = {}
    pending = [str(i) for i in task_run_ids]
    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while pending:
            for run_id in list(pending):
                try:
                    run = client.read_task_run(run_id)
                except ObjectNotFound:
                    continue
                if run.state is not None and run.state.is_final():
                    found[run_id] = _inputs(run.task_inputs)
                    pending.remove(run_id)
            if pending:
                assert time.monotonic() < deadline, f"the API has no final state for {pending}"
                time.sleep(0.1)
    return found


def _task_run(run_id: Any) -> str:
    return json.dumps({"id": str(run_id), "input_type": "task_run"}, sort_keys=True)


@pytest.mark.parametrize("kind", RUNNERS)
def test_each_run_records_and_receives_what_stock_gives_it(kind, shim, make_runner):
    from prefect_future_anchor import plain_walk

    runner = make_runner(kind)
    shim()
    patch = _patch(kind)
    assert patch.applied, "the patch under test is not applied"
    collects = patch.collects(patch._holder())
    before = dict(plain_walk.answered)

    out = walk_tasks.walked.with_options(task_runner=runner)(patch.name)
    runs, sent = out["runs"], out["sent"]
    inputs = recorded([run_id for run_id, _ in runs.values()])
    for name in sent:
        (stock_id, stock_seen), (patched_id, patched_seen) = runs[name, "stock"], runs[name, "patched"]
        assert inputs[str(patched_id)] == inputs[str(stock_id)], f"{name}: the recorded inputs differ"
        for field, value in stock_seen.items():
            assert patched_seen[field] == value, f"{name}: {field} differs"
        assert set(patched_seen) == set(stock_seen)
        if name in PLAIN:
            assert patched_seen["xs"] == sent[name]["xs"] and patched_seen["ys"] == sent[name]["ys"], name

    # Not vacuous: the pass answered the plain cases' swaps (and, where the
    # runner's submit collects the inputs in the flow's process, their look-ups) ...
    answered = {k: plain_walk.answered[k] - before.get(k, 0) for k in ("swap", "collect")}
    assert answered["swap"] >= len(PLAIN), answered
    if collects:
        assert answered["collect"] >= len(PLAIN), answered
    # ... and stock recorded the earlier run where an element is the very object it returned.
    stock = {name: inputs[str(runs[name, "stock"][0])] for name in sent}
    if kind == "dask" and out["linked"]:  # prefect-dask collects the inputs in the flow's process and records them
        produced = _task_run(out["produce"])
        for name, key in (("linked elements", "xs"), ("linked elements", "ys"), ("linked containers", "xs"),
                          ("linked containers", "ys"), ("interned word", "xs"), ("nested dict", "xs"),
                          ("shared list", "xs"), ("deep nesting", "xs")):
            assert produced in stock[name][key], f"{name}: stock did not record produce for {key}"
        assert stock["flat list"]["xs"] == [] and stock["tuple and set"]["ys"] == []
        assert _task_run(out["early"]) in stock["future in a list"]["xs"]
        assert produced not in stock["quote"]["xs"]  # quoted: never looked into
    if collects and out["linked"] and runs["linked elements", "stock"][1]["upstream_assets"] is not None:
        # prefect 3.4+: the inputs collected in the flow's process name produce's asset upstream
        assert runs["linked elements", "stock"][1]["upstream_assets"] == [walk_tasks.ASSET]
        assert runs["flat list", "stock"][1]["upstream_assets"] == []


def _linked_values(made: List[Any], rng: random.Random, count: int) -> List[Any]:
    """Generated parameter values: plain ones, some holding produce's objects,
    some with a not-plain object or a shared container in them."""
    from prefect.utilities.annotations import quote

    leaves = [0, 1, 7, 300, 10**9, -3, 2.5, "a", "plain_walk_word", b"b", True, False, None] + list(made)

    def value(depth: int) -> Any:
        roll = rng.random()
        if depth > 3 or roll < 0.45:
            return rng.choice(leaves)
        size = rng.randint(0, 5)
        if roll < 0.6:
            return [value(depth + 1) for _ in range(size)]
        if roll < 0.7:
            return tuple(value(depth + 1) for _ in range(size))
        if roll < 0.8:
            return {rng.choice(["k", 1, "plain_walk_word", made[0], (1, 2)]): value(depth + 1) for _ in range(size)}
        if roll < 0.88:
            return {rng.choice([leaf for leaf in leaves if not isinstance(leaf, list)]) for _ in range(size)}
        if roll < 0.92:
            return walk_tasks.Word("w")
        if roll < 0.95:
            return quote([value(depth + 1)])
        return frozenset({1, 2})

    values = [value(0) for _ in range(count)]
    shared = [made[0], 5]
    values += [[shared, shared], {"a": shared, "b": [shared]}, made, made[2], [made[2]], {"k": made[3]}]
    return values


@pytest.fixture(scope="module")
def compared():
    """In a real flow run (thread-pool runner, the session's server): for each
    generated value, prefect's own ``collect_task_run_inputs_sync`` and the pass,
    with ``produce``'s result linked to its run."""
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.utilities.engine import collect_task_run_inputs_sync

    from prefect_future_anchor import plain_walk
    from prefect_future_anchor.dask_runner import PLAIN_WALK

    attribute = PLAIN_WALK.results_attribute()
    assert attribute is not None

    @flow(persist_result=False)
    def compare() -> List[Any]:
        made = walk_tasks.produce()
        fast = plain_walk.collecting(collect_task_run_inputs_sync, "test", lambda: True, FlowRunContext, attribute)
        values = _linked_values(made, random.Random(36), 400)
        return [(value, collect_task_run_inputs_sync(value), fast(value)) for value in values], walk_tasks.linked(made[0])

    return compare()


def test_the_pass_collects_what_prefect_collects(compared):
    rows, linked_here = compared
    linked = 0
    for value, stock, fast in rows:
        assert fast == stock, f"{value!r}: {fast} != {stock}"
        linked += bool(stock)
    if linked_here:  # not on prefect 3.0.x, whose links are gone at once (walk_tasks.linked)
        assert linked >= 20, "too few generated values hold an object of produce's result: the comparison proves little"


@pytest.mark.parametrize("kind", RUNNERS)
def test_the_pass_swaps_what_the_runner_swaps(kind, compared):
    """The runner's own future-swapping walk and the pass give the same object
    back for every generated value (no future in them: the value itself)."""
    from prefect_future_anchor import plain_walk

    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        runner, walker, lists_refs = DaskTaskRunner(), "_optimize_futures", False
    else:
        from prefect_ray import RayTaskRunner

        runner, walker, lists_refs = RayTaskRunner(), "_exchange_prefect_for_ray_futures", True
    stock = getattr(runner, walker)
    wrapper = plain_walk.swapping("test", lambda: True, lists_refs)
    for value, _, _ in compared[0]:
        for expr in (value, {"xs": value, "ys": walk_tasks.Word("w")}, {"xs": value, "n": 3}):
            want, got = stock(expr), wrapper(stock, runner, (expr,), {})
            if lists_refs:
                assert got[1] == want[1] == []
                want, got = want[0], got[0]
            assert got is want is expr, f"{expr!r}"


def test_what_the_pass_takes_for_plain():
    from prefect_future_anchor.plain_walk import LINKED, MAX_DEPTH, UNLINKED, scan

    assert scan([1, "a", (2.5, b"b"), {"k": {None, True}}]) == UNLINKED
    for not_plain in ([walk_tasks.Word("w")], (1, frozenset()), {"k": object()}, [[1]] * 2):
        assert scan(not_plain) is None, not_plain
    looped: List[Any] = [1]
    looped.append(looped)
    assert scan(looped) is None
    assert scan(walk_tasks.nested(MAX_DEPTH - 2, 1)) == UNLINKED
    assert scan(walk_tasks.nested(MAX_DEPTH, 1)) is None
    inner, key = [4000], "k" + str(9)
    value = {key: [1, (2, inner)]}
    assert scan(value, {}) == UNLINKED and scan(value, {id(object()): 1}) == UNLINKED
    for linked in (value, key, inner, value[key]):
        assert scan(value, {id(linked): "state"}) == LINKED


@pytest.mark.parametrize("kind", RUNNERS)
def test_the_shims_own_failure_leaves_the_stock_walks(kind, shim, monkeypatch):
    """If the pass itself fails, the stock walks run and the failure is logged once (``guard``)."""
    import importlib

    from prefect.utilities.engine import collect_task_run_inputs_sync

    from prefect_future_anchor import guard, plain_walk

    module = importlib.import_module(f"prefect_{kind}.task_runners")
    shim()
    patch = _patch(kind)
    assert patch.applied, "the patch under test is not applied"

    def broken(*args, **kwargs):
        raise RuntimeError("the pass broke")

    monkeypatch.setattr(plain_walk, "scan", broken)
    runner = getattr(module, patch.runner_name)()
    value = {"xs": [1, 2, 3]}
    swapped = getattr(runner, patch.walker)(value)
    assert (swapped[0] if patch.lists_refs else swapped) is value
    holder = patch._holder()
    if patch.collects(holder):
        assert holder.collect_task_run_inputs_sync is not collect_task_run_inputs_sync
        assert holder.collect_task_run_inputs_sync([1, 2]) == set()
    assert patch.name in guard.failures()
