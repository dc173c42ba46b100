"""``dask.payload-once``: a shared Dask scheduler keeps no Prefect ``Task`` or
context of finished runs, and nothing a run gives back changes.

Real parts: a ``dask scheduler`` and ``dask worker`` started by hand (stopped by
handle), a ``LocalCluster`` that adapts from no worker, the session's Prefect
server.  Each test has its stock control (the patch switched off).  What each
task sees on its worker, stock against patched, is compared field by field in
tests/test_context_once_real.py (its ``dask.payload-once`` case).
"""

from __future__ import annotations

import os
import time

import pytest

import scheduler_probe
from conftest import _wait_until, dask_processes_at, runners_available

pytestmark = pytest.mark.skipif("dask" not in runners_available(), reason="this environment has no prefect-dask")

PAIRS = int(os.environ.get("PFA_PAYLOAD_PAIRS", "50"))


def _patch():
    import prefect_dask.task_runners  # noqa: F401  (the patches apply on its import)

    from prefect_future_anchor.dask_payloads import PAYLOAD_ONCE

    assert PAYLOAD_ONCE.applied, "the patch under test is not applied"
    return PAYLOAD_ONCE


def _forgotten(client) -> None:
    """Bounded wait until the scheduler holds none of the flow's keys (its client closed)."""
    _wait_until(lambda: client.run_on_scheduler(scheduler_probe.keys) == 0, 180, "the scheduler to forget the flow's keys")


def test_a_shared_scheduler_keeps_no_task_or_context_of_finished_runs(tmp_path, shim):
    """Two flows patched, then one stock, on one hand-started scheduler: after
    the patched flows it holds no Prefect Task and no serialized context (and
    never imported prefect); after the stock flow, two Tasks and a context per run."""
    from distributed import Client
    from distributed.utils import key_split
    from prefect_dask import DaskTaskRunner

    from payload_tasks import seed

    shim()
    patch = _patch()
    with dask_processes_at(tmp_path, workers=1, nthreads=4) as (address, _pids):
        with Client(address, timeout=60, set_as_default=False) as client:
            patched = [seed.with_options(task_runner=DaskTaskRunner(address=address))(PAIRS) for _ in range(2)]
            _forgotten(client)
            after_patched = client.run_on_scheduler(scheduler_probe.held)
            patch.switch(False)
            try:
                stock = seed.with_options(task_runner=DaskTaskRunner(address=address))(PAIRS)
            finally:
                patch.switch(True)
            _forgotten(client)
            after_stock = client.run_on_scheduler(scheduler_probe.held)

    for total, states, keys in patched:
        assert total == stock[0] == 84 * PAIRS
        assert states == stock[1] == ["COMPLETED"] * PAIRS
        assert {key_split(k) for k in keys} == {key_split(k) for k in stock[2]}, "run keys lost their prefix"
    assert after_patched == {
        "tasks": 0, "contexts": 0, "prefect imported": False, "keys": 0, "payload keys": 0, "payloads in memory": 0
    }
    # The control: stock leaves each run's Task (twice) and context in the scheduler.
    assert after_stock["tasks"] >= 2 * PAIRS and after_stock["contexts"] >= PAIRS, after_stock


def test_payloads_are_released_once_their_runs_end_however_they_end(tmp_path, shim):
    """More distinct payloads than a client keeps idle, runs that fail, one whose
    worker dies, one cancelled: once every run has ended, no payload is in use
    and at most ``LINGER`` idle ones are left, in the client and in the scheduler."""
    from distributed import Client
    from prefect_dask import DaskTaskRunner

    from payload_tasks import MANY, ends_of_all_kinds
    from prefect_future_anchor.dask_payloads import LINGER

    shim()
    _patch()
    env = {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    with dask_processes_at(tmp_path, workers=2, nthreads=2, env=env) as (address, _pids):
        seen = ends_of_all_kinds.with_options(task_runner=DaskTaskRunner(address=address))()
        with Client(address, timeout=60, set_as_default=False) as client:
            _forgotten(client)

    assert seen["sent"] == len(MANY) + 3  # one payload a task: reused by the second `fails`
    assert seen["in use"] == 0
    assert seen["held"] == LINGER and seen["scheduler"] <= LINGER, seen
    assert seen["states"] == sorted(["COMPLETED"] * len(MANY) + ["FAILED", "FAILED"])


def test_an_adaptive_cluster_with_no_worker_scales_up_for_the_runs(shim):
    """A LocalCluster that starts with no worker: the payload is a task like the
    runs (nothing is scattered), so the cluster scales up and the flow ends as stock's."""
    from prefect_dask import DaskTaskRunner

    from payload_tasks import seed

    def runner():
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": 0, "threads_per_worker": 2, "dashboard_address": None},
            adapt_kwargs={"minimum": 0, "maximum": 1},
        )

    shim()
    patch = _patch()
    started = time.monotonic()
    patched = seed.with_options(task_runner=runner())(3)
    patch.switch(False)
    try:
        stock = seed.with_options(task_runner=runner())(3)
    finally:
        patch.switch(True)
    assert patched[:2] == stock[:2] == (252, ["COMPLETED"] * 3), (patched, stock, time.monotonic() - started)


def test_the_shims_own_failure_leaves_the_stock_submit(shim, make_runner, monkeypatch):
    """If the rewriting fails, the run is submitted as stock submits it and the
    failure is logged once."""
    from prefect_future_anchor import dask_payloads, guard

    from payload_tasks import seed

    runner = make_runner("dask")
    shim()
    patch = _patch()

    def broken(*args, **kwargs):
        raise RuntimeError("the rewriting broke")

    monkeypatch.setattr(dask_payloads.PayloadOnce, "_rewritten", staticmethod(broken))
    total, states, keys = seed.with_options(task_runner=runner)(2)
    assert (total, states) == (168, ["COMPLETED"] * 2)
    assert patch.name in guard.failures()


def _broken():
    raise RuntimeError("a payload whose computation failed (as when Dask gives up on its worker)")


def test_a_broken_payload_is_sent_again_and_its_last_run_lets_it_go():
    """A payload future that ended in error is not handed to new runs: they get a
    fresh one; the runs still holding the broken one give it back, and it is released."""
    from distributed import Client, LocalCluster

    from prefect_future_anchor.dask_payloads import Payloads

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster, set_as_default=False) as client:
            payloads = Payloads()
            broken = payloads.take(b"same bytes", lambda: client.submit(_broken, pure=False))
            broken.future.exception()  # waits for it to end
            assert broken.future.status == "error"
            fresh = payloads.take(b"same bytes", lambda: client.submit(int, 1, pure=False))
            assert fresh is not broken and fresh.future.result() == 1
            assert payloads.sent == 2 and payloads.held() == 1
            payloads.give_back(broken)  # its last run ended: let go, the fresh one untouched
            assert payloads.held() == 1 and payloads.in_use() == 1
            payloads.give_back(fresh)
            assert payloads.held() == 1 and payloads.in_use() == 0  # idle, kept for reuse
            assert payloads.take(b"same bytes", lambda: client.submit(int, 2, pure=False)) is fresh
