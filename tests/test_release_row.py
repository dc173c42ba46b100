"""One row of the release matrix: what the stock release does, and what install() says.

The row (``noxfile.py``) states what was observed on the real release, independently of
the shim's own table: ``PFA_EXPECT_STOCK_WARNINGS`` names the runners whose seed flow
warns, ``PFA_EXPECT_FINISHED_WARNINGS`` the runners that warn even for a run that has
finished (prefect-ray 0.4.4), ``PFA_EXPECT_CLIENT_RACE=1`` that threads submitting at once
create several Dask clients (prefect-dask 0.3.4+).  The guard table must agree with it:
every installed runner is tracked, a Ray runner whose futures warn gets ``ray.ready-del``
(its ``__del__`` would fetch or warn), a racing Dask runner gets ``dask.client-once``.  Defaults are the reference environment (prefect 3.3.7,
prefect-dask 0.3.5, prefect-ray 0.4.4).
"""

from __future__ import annotations

import gc
import importlib

import pytest

import prefect_future_anchor
from conftest import expected_patches, finished_warns, runners_available
from prefect_future_anchor import registry, releases

RUNNERS = runners_available()
RUNNER_MODULES = {"prefect-dask": "prefect_dask.task_runners", "prefect-ray": "prefect_ray.task_runners"}


def test_install_report_matches_the_row(shim, capsys):
    versions = releases.detect()
    for distribution, module_name in RUNNER_MODULES.items():
        if versions.get(distribution) is not None:
            importlib.import_module(module_name)
    report = shim()
    with capsys.disabled():  # the matrix log shows each row's report
        print(f"\n{report}")
    assert report.problems == [], str(report)
    assert set(report.applied) == expected_patches(versions), str(report)
    for patch in registry.PATCHES:
        if patch.applied:
            assert patch.problem(importlib.import_module(patch.module_name)) is None, patch.name


def _run_drop_finished(runner):
    from prefect import flow

    from flows import task1

    def drop_finished():
        # Self-contained: Ray pickles the flow body by value, and a helper defined
        # in this test module could not be imported on a Ray worker.
        future = task1.submit()
        raw = future.wrapped_future
        if hasattr(raw, "add_done_callback"):  # distributed.Future
            raw.result(timeout=120)
        else:  # ray.ObjectRef: wait for it without fetching or resolving the future
            import ray

            assert ray.wait([raw], timeout=120, fetch_local=False)[0], "the run did not finish"
        del future, raw
        gc.collect()

    flow(drop_finished, name="drop-finished", task_runner=runner)()


@pytest.mark.parametrize("kind", RUNNERS)
def test_dropping_a_finished_run(kind, make_runner, gc_warnings, shim):
    """A finished run nobody resolves is dropped: silent, except stock prefect-ray 0.4.4."""
    _run_drop_finished(make_runner(kind))
    gc.collect()
    assert gc_warnings.count == (1 if finished_warns(kind) else 0)

    gc_warnings.count = 0
    shim(on_exit="ignore")
    _run_drop_finished(make_runner(kind))
    gc.collect()
    assert gc_warnings.count == 0
    assert prefect_future_anchor.wait_released(60)
