"""Issue 17517 on a real Prefect server, a real Dask cluster and a real Ray head.

For each runner: the stock flow shows the false "garbage collected" warning
(proving this environment is affected), the shimmed flow gives none and the
same results, every anchor is released afterwards, and a genuine orphan still
warns.
"""

from __future__ import annotations

import gc
import logging

import pytest

import prefect_future_anchor
from conftest import runners_available, stock_warns
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
    assert f"{kind}.drain" in report.applied
    shimmed = run_seed(make_runner(kind))
    assert shimmed == [84] * 10
    assert settle(gc_warnings) == 0
    assert prefect_future_anchor.live_anchors() == 0


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "seed"])
@pytest.mark.parametrize("kind", RUNNERS)
def test_variant_with_shim_is_silent_and_correct(kind, variant, make_runner, gc_warnings, shim):
    run, expected = VARIANTS[variant]
    shim()
    assert run(make_runner(kind)) == expected
    assert settle(gc_warnings) == 0


def assert_warns_as_stock(kind, count):
    """The stock release's behaviour: warnings where it is affected, none where not."""
    if stock_warns(kind):
        assert count >= 1
    else:
        assert count == 0


# Ray's stock warning is shown by the seed flow above; these controls run on Dask
# (each Ray flow costs a driver connection, and CI's time is bounded).
@pytest.mark.parametrize("variant", ["nested", "wait_for", "diamond", "chain40"])
@pytest.mark.parametrize("kind", [r for r in RUNNERS if r == "dask"])
def test_variant_stock_reproduces_warning(kind, variant, make_runner, gc_warnings):
    """Control: without the shim the same variant warns where the release is affected."""
    run, expected = VARIANTS[variant]
    assert run(make_runner(kind)) == expected
    assert_warns_as_stock(kind, settle(gc_warnings))


@pytest.mark.parametrize("kind", RUNNERS)
def test_genuine_orphan_still_warns(kind, make_runner, gc_warnings, shim):
    """The shim removes false alarms only: a run nobody waits for or depends on
    still gets the upstream warning (with on_exit='ignore', i.e. no drain)."""
    shim(on_exit="ignore")
    assert run_orphan(make_runner(kind)) == 42
    assert settle(gc_warnings) == (1 if stock_warns(kind) else 0)


@pytest.mark.parametrize("kind", RUNNERS)
def test_uninstall_restores_stock_behaviour(kind, make_runner, gc_warnings, shim):
    shim()
    prefect_future_anchor.uninstall()
    assert run_seed(make_runner(kind)) == [84] * 10
    assert_warns_as_stock(kind, settle(gc_warnings))


@pytest.mark.parametrize("kind", RUNNERS)
def test_anchors_do_not_outlive_their_runs_and_make_no_cycles(kind, make_runner, shim):
    """A parent is freed by reference counting alone once its dependent resolves."""
    shim()
    gc.collect()
    gc.disable()
    try:
        anchored, result = flows.run_weakly_watched_parent(make_runner(kind))
        assert anchored, "the parent must be anchored while its child runs"
        assert result == 2
        assert prefect_future_anchor.wait_released(60)
        assert flows.PARENT_REFS[-1]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("kind", RUNNERS)
def test_futures_anchored_before_uninstall_still_release(kind, make_runner, gc_warnings, shim):
    """The parent is kept until its child resolves even though the shim was
    removed meanwhile.  It is then dropped under stock code: on prefect-ray
    0.4.4 the restored stock ``__del__`` warns even for a finished run (the
    defect ``ray.ready-del`` corrects while installed), elsewhere it is silent."""
    runner = make_runner(kind)
    report = shim(on_exit="ignore")
    assert flows.run_uninstall_mid_flow(runner) == (True, 2)
    expected = 1 if kind == "ray" and report.patch("ray.ready-del").state == "applied" else 0
    assert settle(gc_warnings) == expected
    assert not prefect_future_anchor.is_installed()


@pytest.mark.parametrize("kind", RUNNERS)
def test_shim_failure_leaves_flow_stock_and_logs_once(kind, make_runner, gc_warnings, shim, monkeypatch, caplog):
    """If the shim's own code fails inside submit, the flow runs as stock Prefect
    would (same results, upstream warnings and all) and one error line is logged."""
    from prefect_future_anchor import anchor, guard

    def broken(*args, **kwargs):
        raise RuntimeError("shim bug")

    monkeypatch.setattr(anchor, "hold", broken)
    monkeypatch.setattr(guard, "_reported", set())
    shim()
    with caplog.at_level(logging.ERROR, logger="prefect_future_anchor"):
        assert run_seed(make_runner(kind)) == [84] * 10
    errors = [r for r in caplog.records if r.name == "prefect_future_anchor" and r.levelno >= logging.ERROR]
    assert len(errors) == 1 and f"{kind}.submit" in errors[0].getMessage()
    count = settle(gc_warnings)
    assert count >= 1 if stock_warns(kind) else count == 0
