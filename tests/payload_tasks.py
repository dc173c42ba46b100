"""Tasks and a scheduler probe for tests/test_payload_once_real.py (importable by
the workers and the scheduler, which run with the tests' directory on their path)."""

from __future__ import annotations

import os
import threading

from prefect import flow, task

import scheduler_probe


@task
def first():
    return 42


@task
def double(x):
    return x * 2


@task
async def later(x):
    return x + 1


@task
def fails(x):
    raise ValueError(f"{x} fails on purpose")


@task
def kills_its_worker(x):
    os._exit(1)


@task
def waits(x):
    threading.Event().wait(120)  # cancelled by the flow long before; its worker is stopped with the test


def one(x):
    return x


#: Several tasks of their own: more distinct payloads than a client keeps idle.
MANY = [task(one, name=f"one-{i}") for i in range(7)]


@flow(persist_result=False)
def seed(pairs: int):
    """The seed pattern: ``double.submit(first.submit())``, every run's state and key kept."""
    kept = [double.submit(first.submit()) for _ in range(pairs)]
    states = [f.wait() or f.state for f in kept]
    return sum(f.result() for f in kept), [s.type.value for s in states], [f.wrapped_future.key for f in kept]


def _until(check, limit: float, what: str) -> None:
    """A bounded poll for a condition another thread makes true."""
    import time

    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {limit} s")
        threading.Event().wait(0.05)


@flow(persist_result=False)
def ends_of_all_kinds():
    """Runs that complete (one payload each), fail, die with their worker or are
    cancelled; once all have ended: what the client and the scheduler still hold."""
    from prefect.context import FlowRunContext

    from prefect_future_anchor.dask_payloads import payloads_of

    runner = FlowRunContext.get().task_runner
    client = runner.__dict__.get("_client") or runner.client  # prefect-dask before 0.3.4: no client property
    futures = [t.submit(i) for i, t in enumerate(MANY)] + [fails.submit(1), fails.submit(2)]
    blocked = waits.submit(0)
    killed = kills_its_worker.submit(0)
    for f in futures:
        f.wait()
    blocked.wrapped_future.cancel()
    killed.wrapped_future.exception()  # KilledWorker (allowed-failures 0)
    _until(lambda: blocked.wrapped_future.cancelled(), 120, "the cancel")
    payloads = payloads_of(client)
    # the completions give their uses back on the client's loop
    _until(lambda: payloads.in_use() == 0, 120, "the payloads' uses to be given back")
    # a release reaches the scheduler as a message from the client's loop
    _until(lambda: client.run_on_scheduler(scheduler_probe.held)["payloads in memory"] <= payloads.held(), 120,
           "the scheduler to forget the released payloads")
    return {
        "sent": payloads.sent,
        "held": payloads.held(),
        "in use": payloads.in_use(),
        "scheduler": client.run_on_scheduler(scheduler_probe.held)["payloads in memory"],
        "states": sorted(f.state.type.value for f in futures),
    }
