"""Issue 17517 on a real Prefect server, a real Dask cluster and a real Ray head.

For each runner: the stock flow shows the false "garbage collected" warning
(proving this environment is affected), the shimmed flow gives none and the
same results in every on_exit mode, every held run is let go afterwards, no
run's value is fetched into the driver, and a genuine orphan still warns.
"""

from __future__ import annotations

import gc
import logging

import pytest

import prefect_future_anchor
from conftest import client_races, finished_warns, runners_available, stock_warns
import flows
from flows import VARIANTS, run_orphan, run_seed

RUNNERS = runners_available()


def settle(gc_warnings):
    """All anchors released (their runs resolved), stray cycles collected."""
    assert prefect_future_anchor.wait_released(60), "anchors were not released"
    gc.collect()
    return gc_warnings.count


@pytest.mark.parametrize("kind", RUNNERS)
def test_seed_flow_stock_warns_shim_does_not(kind, make_runner, gc_warnings, shim):
    stock = run_seed(make_runner(kind))
    stock_count = settle(gc_warnings)
    assert stock == [84] * 10
    if stock_warns(kind):
        assert stock_count >= 1, "stock runner did not warn: this environment does not show the bug"
    else:
        assert stock_count == 0

    gc_warnings.count = 0
    report = shim()
    assert f"{kind}.track" in report.applied
    shimmed = run_seed(make_runner(kind))
    assert shimmed == [84] * 10
    assert settle(gc_warnings) == 0
    assert prefect_future_anchor.live_anchors() == 0


def assert_warns_as_stock(kind, count):
    """The stock release's behaviour: warnings where it is affected, none where not."""
    if stock_warns(kind):
        assert count >= 1
    else:
        assert count == 0


def skipped_variants(kind):
    """Variants the stock release itself cannot run (conftest.UPSTREAM_BROKEN)."""
    from importlib import metadata

    from conftest import UPSTREAM_BROKEN
    from prefect_future_anchor.releases import parse_version

    skip = []
    for (runner, variant), (distribution, fixed, _why) in UPSTREAM_BROKEN.items():
        if runner == kind and parse_version(metadata.version(distribution)) < parse_version(fixed):
            skip.append(variant)
    return skip


@pytest.mark.parametrize("kind", RUNNERS)
def test_every_variant_stock_control_then_each_on_exit_mode(kind, make_runner, gc_warnings, shim):
    """Nested collections, wait_for, map/unmapped, diamond, a 15-deep chain and async
    tasks, each in one flow run: stock first (the control: each variant warns where the
    release is affected), then shimmed with on_exit='wait' and with on_exit='ignore',
    where no variant warns and every result is right (on_exit='cancel' too: nothing
    the variants wait for is unresolved at exit, so nothing is cancelled)."""
    skip = skipped_variants(kind)
    stock = flows.run_every_variant(make_runner(kind), gc_warnings, skip)
    assert set(stock) == set(VARIANTS) - set(skip)
    for name, (result, warnings) in stock.items():
        assert result == VARIANTS[name][1], name
        if stock_warns(kind):
            assert warnings >= 1, f"stock {name} did not warn: the control does not show the bug"
        else:
            assert warnings == 0, name
    settle(gc_warnings)

    for mode in ("wait", "cancel", "ignore"):
        gc_warnings.count = 0
        shim(on_exit=mode)
        shimmed = flows.run_every_variant(make_runner(kind), gc_warnings, skip)
        for name, (result, warnings) in shimmed.items():
            assert (name, result, warnings) == (name, VARIANTS[name][1], 0), mode
        assert settle(gc_warnings) == 0, mode
        prefect_future_anchor.uninstall()


@pytest.mark.parametrize("kind", RUNNERS)
def test_completion_fetches_no_result_into_the_driver(kind, make_runner, shim, monkeypatch):
    """Knowing that a run finished must not pull its value into the flow's process:
    stock fetches a value only when user code asks for it.  (Ray's
    ``ObjectRef._on_completed`` fetches it, and prefect-ray 0.4.0-0.4.4's
    ``__del__`` does with ``ray.get``; Dask's done callback reads the status only.)"""
    assert flows.run_fetch_probe(make_runner(kind)) == 0  # stock
    # on_exit='wait' only: every mode tracks completion the same way (with final states
    # on, 'ignore' holds and watches each run as 'wait' does; it differs at exit only)
    shim(on_exit="wait")
    assert flows.run_fetch_probe(make_runner(kind)) == 0
    assert prefect_future_anchor.wait_released(60)
    # The positive control: a completion callback that does fetch is counted.
    monkeypatch.setattr(_runtime(kind), "when_done", _fetching_when_done(kind))
    assert flows.run_fetch_probe(make_runner(kind)) >= 1
    assert prefect_future_anchor.wait_released(60)


def _runtime(kind):
    from prefect_future_anchor import dask_runner, ray_runner

    return {"dask": dask_runner.runtime, "ray": ray_runner.runtime}[kind]


def _fetching_when_done(kind):
    """What the shim must not do: fetch the value once the run is done (Dask:
    ``result()``; Ray: ``ray.get``, as ``ObjectRef._on_completed`` would)."""
    if kind == "dask":
        return lambda raw, on_done, on_lost: raw.add_done_callback(lambda f: (f.result(), on_done()))
    import ray

    watcher = _runtime("ray").watcher
    return lambda raw, on_done, on_lost: watcher.watch(raw, lambda: (ray.get(raw), on_done()), on_lost)


@pytest.mark.parametrize("kind", RUNNERS)
def test_genuine_orphan_still_warns(kind, make_runner, gc_warnings, shim, tmp_path):
    """The shim removes false alarms only: a run nobody waits for or depends on, and
    still unresolved when the flow ends, still gets the upstream warning (with
    on_exit='ignore', i.e. no drain: the shim lets it go at exit, as stock does)."""
    shim(on_exit="ignore")
    try:
        assert run_orphan(make_runner(kind), str(tmp_path)) == 42
        count = settle(gc_warnings)
    finally:
        (tmp_path / "release").write_text("")
    assert count == (1 if stock_warns(kind) else 0)


@pytest.mark.parametrize("kind", RUNNERS)
def test_uninstall_restores_stock_behaviour(kind, make_runner, gc_warnings, shim):
    shim()
    prefect_future_anchor.uninstall()
    assert run_seed(make_runner(kind)) == [84] * 10
    assert_warns_as_stock(kind, settle(gc_warnings))


@pytest.mark.parametrize("kind", RUNNERS)
def test_anchors_do_not_outlive_their_runs_and_make_no_cycles(kind, make_runner, shim):
    """A parent is held while it runs and freed by reference counting alone once
    it has resolved (no cycle keeps it)."""
    shim()
    gc.collect()
    gc.disable()
    try:
        anchored, result = flows.run_weakly_watched_parent(make_runner(kind))
        assert anchored, "the parent must be held while it runs"
        assert result == 2
        assert prefect_future_anchor.wait_released(60)
        assert flows.PARENT_REFS[-1]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", RUNNERS)
def test_futures_anchored_before_uninstall_still_release(kind, make_runner, gc_warnings, shim):
    """The runs are held until they resolve even though the shim was
    removed meanwhile.  It is then dropped under stock code: on prefect-ray
    0.4.4 the restored stock ``__del__`` warns even for a finished run (the
    defect ``ray.ready-del`` corrects while installed), elsewhere it is silent."""
    runner = make_runner(kind)
    report = shim(on_exit="ignore")
    assert flows.run_uninstall_mid_flow(runner) == (True, 2)
    assert report.installed
    assert settle(gc_warnings) == (1 if finished_warns(kind) else 0)
    assert not prefect_future_anchor.is_installed()


def _break_hold(monkeypatch):
    from prefect_future_anchor import anchor

    monkeypatch.setattr(anchor.Runs, "hold", _raise)
    return "{kind}.submit", True


def _break_client_once(monkeypatch):
    from prefect_future_anchor import dask_runner

    monkeypatch.setattr(dask_runner, "_creation_lock", _raise)
    return "dask.client-once", False


def _break_ray_watcher(monkeypatch):
    from prefect_future_anchor import ray_watch

    monkeypatch.setattr(ray_watch.Watcher, "_ready", _raise)
    return "ray.watch", True


def _raise(*args, **kwargs):
    raise RuntimeError("shim bug")


FAILURES = [("dask", _break_hold), ("ray", _break_hold), ("ray", _break_ray_watcher)]
if client_races():  # the row's stock client races: dask.client-once applies there only
    FAILURES.append(("dask", _break_client_once))


@pytest.mark.parametrize(
    "kind, breaking",
    [f for f in FAILURES if f[0] in RUNNERS],
    ids=[f"{k}-{b.__name__[7:]}" for k, b in FAILURES if k in RUNNERS],
)
def test_shim_failure_leaves_flow_stock_and_logs_once(kind, breaking, make_runner, gc_warnings, shim, monkeypatch, caplog):
    """If the shim's own code fails (inside submit, the Dask client property, the Ray
    completion watcher), the flow runs as stock Prefect would (same results, upstream
    warnings and all) and one error line is logged."""
    from prefect_future_anchor import guard

    where, stock_like = breaking(monkeypatch)
    where = where.format(kind=kind)
    monkeypatch.setattr(guard, "_reported", set())
    shim()
    with caplog.at_level(logging.ERROR, logger="prefect_future_anchor"):
        assert run_seed(make_runner(kind)) == [84] * 10
    errors = [r for r in caplog.records if r.name == "prefect_future_anchor" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and where in errors[0].getMessage(), [r.getMessage() for r in errors]
    count = settle(gc_warnings)
    if stock_like:
        assert count >= 1 if stock_warns(kind) else count == 0
    else:
        assert count == 0
