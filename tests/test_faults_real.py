"""Faults and load against real processes: the shim holds when the cluster does not.

- a ``dask scheduler`` and two ``dask worker`` processes started here; one worker
  process is SIGKILLed (by the pid the worker itself reports) once a quarter of
  the flow's dependent runs have completed, as seen by done callbacks;
- a Ray head started here (the session's ``ray_address``): a child that raises and
  a child whose worker process exits (``os._exit``), next to ordinary chains;
- eight threads submitting while another toggles ``install()`` / ``uninstall()``
  (all three in CI; ``./run faults`` runs them alone).

The flow of the first two: ``CHAINS`` chains ``parent(i) -> child(parent)``,
only the children's futures kept (the seed flow's shape, 2 x CHAINS runs).
Everything runs on 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import contextvars
import gc
import os
import signal
import threading
import time

import pytest

import prefect_future_anchor
from conftest import dask_processes_at, runners_available
from prefect import flow

from fault_tasks import DriverSide, child, exits, parent, raises

RUNNERS = runners_available()
CHAINS = 40  # 80 dependent task runs for Dask
RAY_CHAINS = 8  # 2 Ray CPUs and a Prefect engine per run: 16 runs + the two faulty chains


def settled(gc_warnings) -> int:
    assert prefect_future_anchor.wait_released(60), "anchors were not released"
    gc.collect()
    return gc_warnings.count


# -- Dask: a worker process killed mid-flow ---------------------------------------------


@pytest.fixture
def dask_processes(tmp_path):
    """``dask scheduler`` + two ``dask worker`` processes (own process groups);
    yields the scheduler address and ``{worker address: worker pid}``."""
    if "dask" not in RUNNERS:
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    with dask_processes_at(tmp_path, workers=2) as found:
        yield found


@pytest.mark.faults
def test_dask_worker_killed_mid_flow(dask_processes, gc_warnings, shim):
    """80 dependent runs; one worker process is SIGKILLed once 10 of the 40
    children have completed: every run completes, no warning, all anchors released."""
    from prefect_dask import DaskTaskRunner

    address, pids = dask_processes
    victim = sorted(pids.values())[0]
    shim()
    progress = DriverSide(completed=0, quarter=threading.Event(), lock=threading.Lock())

    def count(_raw):
        with progress.lock:
            progress.completed += 1
            if progress.completed >= CHAINS // 4:
                progress.quarter.set()

    progress.count = count

    def chains():
        children = [child.submit(parent.submit(i)) for i in range(CHAINS)]
        for future in children:
            future.wrapped_future.add_done_callback(progress.count)
        assert progress.quarter.wait(180), "a quarter of the children never completed"
        at_kill = progress.completed
        os.kill(victim, signal.SIGKILL)
        return at_kill, [f.result(timeout=300) for f in children]

    started = time.monotonic()
    at_kill, results = flow(chains, name="dask-worker-killed", task_runner=DaskTaskRunner(address=address))()
    assert at_kill < CHAINS, "the worker was killed after the flow's runs had finished"
    assert results == [2 * i for i in range(CHAINS)]
    assert settled(gc_warnings) == 0
    assert prefect_future_anchor.live_anchors() == 0
    assert time.monotonic() - started < 300


# -- Ray: a child that raises, a child whose process exits --------------------------------


@pytest.mark.faults
@pytest.mark.skipif("ray" not in RUNNERS, reason="this environment has no prefect-ray (PFA_RUNNERS)")
def test_ray_child_raises_and_child_process_exits(ray_address, gc_warnings, shim):
    from prefect_ray import RayTaskRunner

    shim()

    def faulty():
        children = [child.submit(parent.submit(i)) for i in range(RAY_CHAINS)]
        failing = raises.submit(parent.submit(-1))
        crashing = exits.submit(parent.submit(-2))
        values = [f.result(timeout=300) for f in children]
        failing.wait(timeout=300)
        crashing.wait(timeout=300)
        return values, failing.state, crashing.state

    values, failed, crashed = flow(
        faulty, name="ray-faulty-children", task_runner=RayTaskRunner(address=ray_address)
    )(return_state=True).result(raise_on_failure=False)
    assert values == [2 * i for i in range(RAY_CHAINS)]
    assert failed.is_failed(), failed
    assert crashed.is_crashed() or crashed.is_failed(), crashed
    assert settled(gc_warnings) == 0, "a parent of a failed or crashed child warned"
    assert prefect_future_anchor.live_anchors() == 0


# -- install()/uninstall() toggled while eight threads submit -----------------------------


@pytest.mark.skipif("dask" not in RUNNERS, reason="this environment has no prefect-dask (PFA_RUNNERS)")
def test_toggling_install_while_threads_submit(dask_address):
    from prefect_dask import DaskTaskRunner
    from prefect_dask.task_runners import PrefectDaskFuture

    originals = {
        "submit": DaskTaskRunner.__dict__["submit"],
        "__exit__": DaskTaskRunner.__dict__["__exit__"],
        "client": DaskTaskRunner.__dict__.get("client"),  # a property from prefect-dask 0.3.4
        "wrapped_future": PrefectDaskFuture.__dict__.get("wrapped_future"),  # inherited: None
    }
    per_thread = 6  # 8 threads: 48 chains, 96 task runs
    toggles = 24  # one install/uninstall pair every two submits
    shared = DriverSide(errors=[], submitted=0, progress=threading.Condition())

    def submitter(n, out):
        try:
            for i in range(per_thread):
                value = n * 1000 + i
                out.append((value, child.submit(parent.submit(value))))
                with shared.progress:
                    shared.submitted += 1
                    shared.progress.notify_all()
        except BaseException as exc:  # the test asserts there were none
            shared.errors.append(exc)

    def toggler():
        """``toggles`` install/uninstall pairs, each after at least one more submit
        happened, so the toggles are spread over the submitting."""
        try:
            seen = 0
            for _ in range(toggles):
                with shared.progress:
                    shared.progress.wait_for(lambda: shared.submitted > seen or shared.errors, timeout=60)
                    seen = shared.submitted
                prefect_future_anchor.install()
                prefect_future_anchor.uninstall()
        except BaseException as exc:
            shared.errors.append(exc)

    shared.submitter, shared.toggler = submitter, toggler

    def busy():
        # One run before the threads start: the runner's Dask client exists, so a
        # toggle that leaves dask.client-once off cannot race its creation
        # (stock prefect-dask 0.3.4+ does; tests/test_concurrent_start_real.py).
        assert parent.submit(-1).result(timeout=120) == -1
        outs = [[] for _ in range(8)]
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(shared.submitter, n, outs[n]))
            for n in range(8)
        ]
        threads.append(threading.Thread(target=shared.toggler))
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "a thread did not finish"
        return [(value, f.result(timeout=300)) for out in outs for value, f in out]

    try:
        results = flow(busy, name="toggle-under-load", task_runner=DaskTaskRunner(address=dask_address))()
    finally:
        prefect_future_anchor.uninstall()
    assert shared.errors == []
    assert len(results) == 8 * per_thread
    assert all(result == 2 * value for value, result in results)
    assert DaskTaskRunner.__dict__["submit"] is originals["submit"]
    assert DaskTaskRunner.__dict__["__exit__"] is originals["__exit__"]
    assert DaskTaskRunner.__dict__.get("client") is originals["client"]
    assert PrefectDaskFuture.__dict__.get("wrapped_future") is originals["wrapped_future"]
    assert not prefect_future_anchor.is_installed()
    assert prefect_future_anchor.wait_released(60)
