"""``<runner>.context-once``: a submit's settings are serialized once per settings
state, and no task sees anything else than stock shows it.

In one flow run on the session's real cluster, each situation a submit can be
made in (plain; under ``tags``; under ``temporary_settings``; both; from inside
a task run; with deployment variables set) submits ``look`` twice: once with
the patch switched off (the stock ``serialize_context`` runs as it is: the
control) and once on.  What each run saw on its worker (flow-run, task-run,
tags, settings, profile and asset contexts, ``prefect.runtime`` values) must
be equal field by field, and the situations must differ where they should (or
the comparison would prove nothing).  The cache must have served submits.

The invalidation tests: a ``temporary_settings`` block after the cache holds
the flow's own settings (a cache without a key serves the old payload), and an
assignment to the live ``Settings`` object in place (a cache keyed by the
context's identity serves the old payload).
"""

from __future__ import annotations

import pytest

from context_tasks import changed_in_place, observed, situations

from conftest import runners_available

RUNNERS = [r for r in ("dask", "ray") if r in runners_available()]

#: The patches that change what a submit sends, each compared with stock on its
#: own, and Dask's two together: (runner, patch names joined by "+").
CASES = [
    (kind, names)
    for kind, names in (
        ("dask", "dask.context-once"),
        ("ray", "ray.context-once"),
        ("dask", "dask.payload-once"),
        ("dask", "dask.context-once+dask.payload-once"),
    )
    if kind in RUNNERS
]


def _patch(kind: str):
    if kind == "dask":
        from prefect_future_anchor.dask_runner import CONTEXT_ONCE
    else:
        from prefect_future_anchor.ray_runner import CONTEXT_ONCE
    return CONTEXT_ONCE


def _patches(names: str):
    from prefect_future_anchor import registry

    found = [p for p in registry.PATCHES if p.name in names.split("+")]
    assert found and all(p.applied for p in found), f"a patch under test is not applied: {found}"
    return found


@pytest.mark.parametrize("kind, names", CASES)
def test_each_run_sees_what_stock_shows_it(kind, names, shim, make_runner):
    from prefect_future_anchor import context_cache

    runner = make_runner(kind)
    shim()
    _patches(names)
    hits_before = context_cache.payloads.hits

    seen = observed.with_options(task_runner=runner)(names)
    for name in situations():
        stock = seen[name, "stock"]
        for side in ("patched", "patched again"):
            for field, value in stock.items():
                if field != "payload-once":  # how the run was called, not what it sees
                    assert seen[name, side][field] == value, f"{name}: {field} differs ({side})"
            assert set(seen[name, side]) == set(stock)
    # The situations are told apart on the worker: the comparison is not vacuous.
    assert seen["tags", "stock"]["tags"] == ["blue", "green"]
    assert seen["settings", "stock"]["settings"]["tasks"]["default_retries"] == 7
    assert seen["plain", "stock"]["settings"]["tasks"]["default_retries"] != 7
    assert seen["tags and settings", "stock"]["settings"]["tasks"]["default_retries"] == 5
    assert seen["inside a task run", "stock"]["flow_run_context"] is not None
    import prefect.context

    if hasattr(prefect.context, "_deployment_id"):  # prefect 3.6+: carried by the serialized context
        assert seen["deployment", "stock"]["runtime"]["deployment.parameters"] == {"region": "north", "size": 3}
    # The cache served submits (the second patched submit of each situation at least).
    assert context_cache.payloads.hits - hits_before >= len(situations())
    if "payload-once" in names:  # the payloads were what the runs used
        # (a task run's own submits are made on the worker, where the shim is not installed)
        flow_level = [name for name, (_situation, inside_a_task) in situations().items() if not inside_a_task]
        assert all(seen[name, side]["payload-once"] for name in flow_level for side in ("patched", "patched again"))
        assert not any(seen[name, "stock"]["payload-once"] for name in flow_level)


@pytest.mark.parametrize("kind, names", CASES)
def test_a_settings_change_in_place_reaches_the_next_run(kind, names, shim, make_runner):
    """An assignment to the live Settings object between two submits: the second
    run sees the new value, patched as stock (an identity-keyed cache fails here)."""
    runner = make_runner(kind)
    shim()
    _patches(names)

    seen = changed_in_place.with_options(task_runner=runner)(names)
    assert seen == {("stock", "before"): 3, ("stock", "after"): 8, ("patched", "before"): 3, ("patched", "after"): 8}


def test_a_settings_context_after_another_gets_its_own_payload():
    """Several settings contexts made and dropped one after the other (their
    objects' addresses are reused): each serialization is its own, as stock's."""
    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_TASK_DEFAULT_RETRIES, temporary_settings

    from prefect_future_anchor import context_cache

    payloads = context_cache.SettingsPayloads()
    for retries in range(1, 40):
        with temporary_settings({PREFECT_TASK_DEFAULT_RETRIES: retries}):
            current = SettingsContext.get()
            for _ in range(2):
                assert payloads.serialized(current) == current.serialize()
    assert payloads.hits == 39 and payloads.misses == 39


def test_a_payload_changed_by_its_receiver_does_not_change_the_next():
    """Each submit gets its own copy of the cached payload."""
    from prefect.context import SettingsContext

    from prefect_future_anchor import context_cache

    payloads = context_cache.SettingsPayloads()
    current = SettingsContext.get()
    payloads.serialized(current)["settings"]["changed"] = True
    assert payloads.serialized(current) == current.serialize()


@pytest.mark.parametrize("kind", RUNNERS)
def test_the_shims_own_failure_leaves_the_stock_serialization(kind, shim, make_runner, monkeypatch):
    """If the cache itself fails, the submit gets the stock serialization and
    the failure is logged once (``guard``)."""
    import importlib

    from prefect.context import serialize_context

    from prefect_future_anchor import context_cache, guard

    make_runner(kind)
    shim()
    patch = _patch(kind)
    holder = importlib.import_module(patch.holder)
    assert holder.serialize_context is not serialize_context, "the patch under test is not applied"

    class Broken:
        def serialized(self, settings_context):
            raise RuntimeError("the cache broke")

    monkeypatch.setattr(context_cache, "payloads", Broken())
    assert holder.serialize_context() == serialize_context()
    assert patch.name in guard.failures()
