"""Private internals of Ray and distributed the shim relies on, moved.

Each test installs the shim on the real modules (no cluster needed), once as they
are (the control: no caveat) and once with one internal replaced by what a later
release might have: the patch still applies, and :func:`status` and one log line
say which guard was lost, with the release.  prefect-ray's engine call that no
longer asks for ``return_type="state"`` refuses ``ray.final-states`` instead.
"""

from __future__ import annotations

import logging
import sys
import types

import pytest

import prefect_future_anchor
from conftest import runners_available
from prefect_future_anchor import guard

pytestmark = pytest.mark.skipif("ray" not in runners_available(), reason="this environment has no prefect-ray")


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    import prefect_dask  # noqa: F401
    import prefect_ray  # noqa: F401

    prefect_future_anchor.uninstall()
    monkeypatch.setattr(guard, "_warned", set())
    yield
    prefect_future_anchor.uninstall()


def installed(records, name: str):
    records.records.clear()
    status = prefect_future_anchor.install().patch(name)
    prefect_future_anchor.uninstall()
    prefect_future_anchor.install()
    prefect_future_anchor.uninstall()
    return status, records.messages(logging.WARNING, "applied without")


def test_ray_wait_without_its_auto_init_wrapper_is_said(monkeypatch, records):
    import ray

    status, lines = installed(records, "ray.track")
    assert status.state == "applied" and "auto-init" not in status.reason and lines == []

    monkeypatch.setattr(ray, "wait", ray.wait.__wrapped__)
    status, lines = installed(records, "ray.track")
    assert status.state == "applied"
    assert "auto-init wrapper has changed" in status.reason and f"Ray {ray.__version__}" in status.reason
    assert len(lines) == 1 and "auto-init wrapper" in lines[0]


def test_ray_shutdown_lock_moved_is_said(monkeypatch, records):
    import ray
    import ray._private.worker as worker

    from prefect_future_anchor import ray_watch

    if getattr(worker, "_connect_or_shutdown_lock", None) is None:
        pytest.skip(f"Ray {ray.__version__} predates _connect_or_shutdown_lock (Ray 2.48)")
    status, lines = installed(records, "ray.track")
    assert "shutdown_lock" not in status.reason and lines == []

    monkeypatch.delattr(worker, "_connect_or_shutdown_lock")
    assert ray_watch._shutdown_lock() is None
    status, lines = installed(records, "ray.track")
    assert status.state == "applied"
    assert "_connect_or_shutdown_lock has moved" in status.reason and f"Ray {ray.__version__}" in status.reason
    assert len(lines) == 1


def test_distributed_done_callback_moved_is_said(monkeypatch, records):
    import distributed.client

    status, lines = installed(records, "dask.track")
    assert "done_callback" not in status.reason and lines == []

    monkeypatch.setattr(distributed.client, "done_callback", lambda future, callback: None)
    status, lines = installed(records, "dask.track")
    assert status.state == "applied" and "done_callback has changed" in status.reason
    assert len(lines) == 1


def test_ray_final_states_needs_the_engine_to_return_its_state(monkeypatch):
    """A task exception would otherwise be a Ray error: every failed run reported Crashed."""
    import prefect_ray.task_runners as real

    report = prefect_future_anchor.install()
    assert report.patch("ray.final-states").state == "applied"
    prefect_future_anchor.uninstall()

    class RayTaskRunner(real.RayTaskRunner):
        """A future release whose engine call returns the result and raises."""

        @staticmethod
        def _run_prefect_task(*upstream, task, task_run_id, parameters, wait_for, dependencies, context):
            from prefect.task_engine import run_task_sync

            return run_task_sync(task=task, task_run_id=task_run_id, parameters=parameters, context=context)

    RayTaskRunner.submit = real.RayTaskRunner.submit
    module = types.ModuleType("prefect_ray.task_runners")
    module.RayTaskRunner = RayTaskRunner
    module.PrefectRayFuture = real.PrefectRayFuture
    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", module)
    monkeypatch.setitem(sys.modules, "prefect_dask.task_runners", None)
    report = prefect_future_anchor.install()
    status = report.patch("ray.final-states")
    assert status.state == "skipped" and "return_type='state'" in status.reason
    assert report.patch("ray.track").state == "applied"
