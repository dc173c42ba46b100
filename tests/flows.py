"""The seed flow of upstream issue 17517 and its variants.

Each ``run_*`` takes a task runner, runs the flow against the session's
Prefect server and returns the flow's result.  Parents are dropped by user
code exactly as in the bug report: only the dependent's future is kept.

This module never imports prefect_future_anchor (the zero-code activation tests
run it in a fresh interpreter to show the switch alone activates the shim), so
it keeps its own copy of the demo's seed tasks.
"""

from __future__ import annotations

import asyncio
import time

from prefect import flow, task, unmapped
from prefect.futures import wait

PARENT_SECONDS = 1.0  # parents still run when user code drops them


@task
def task1():
    return 42


@task
def task2(x):
    return x * 2


@task
def slow(value):
    time.sleep(PARENT_SECONDS)
    return value


@task
def total(items, mapping):
    return sum(items) + sum(mapping.values())


@task
def add(x, y):
    return x + y


@task
def inc(x):
    return x + 1


@task
def done_marker():
    return "after"


@task
async def atask1():
    await asyncio.sleep(0)
    return 42


@task
async def atask2(x):
    await asyncio.sleep(0)
    return x * 2


def _run(body, runner, name):
    return flow(body, name=name, task_runner=runner, log_prints=False)()


def run_seed(runner):
    def seed():
        results = []
        for _ in range(10):
            r1 = task1.submit()
            results.append(task2.submit(r1))
        wait(results)
        return [f.result() for f in results]

    return _run(seed, runner, "seed")


def _nested_child():
    return total.submit([slow.submit(1), slow.submit(2)], {"x": slow.submit(3)})


def run_nested(runner):
    def nested():
        return _nested_child().result()

    return _run(nested, runner, "nested")


def _waiting_child():
    return done_marker.submit(wait_for=[slow.submit(1)])


def run_wait_for(runner):
    def waiting():
        return _waiting_child().result()

    return _run(waiting, runner, "wait-for")


def _mapped_children():
    return add.map([1, 2, 3], unmapped(slow.submit(10)))


def run_map_unmapped(runner):
    def mapped():
        return [f.result() for f in _mapped_children()]

    return _run(mapped, runner, "map-unmapped")


def _diamond_child():
    top = slow.submit(5)
    return add.submit(inc.submit(top), inc.submit(top))


def run_diamond(runner):
    def diamond():
        return _diamond_child().result()

    return _run(diamond, runner, "diamond")


def run_chain(runner, depth=40):
    def chain():
        future = slow.submit(0)
        for _ in range(depth):
            future = inc.submit(future)
        return future.result()

    return _run(chain, runner, "chain")


def run_async_tasks(runner):
    def async_tasks():
        results = []
        for _ in range(5):
            results.append(atask2.submit(atask1.submit()))
        wait(results)
        return [f.result() for f in results]

    return _run(async_tasks, runner, "async-tasks")


def run_orphan(runner):
    def orphan():
        slow.submit(7)  # submitted, never waited, nothing depends on it
        return task1.submit().result()

    return _run(orphan, runner, "orphan")


VARIANTS = {
    "seed": (run_seed, [84] * 10),
    "nested": (run_nested, 6),
    "wait_for": (run_wait_for, "after"),
    "map_unmapped": (run_map_unmapped, [11, 12, 13]),
    "diamond": (run_diamond, 12),
    "chain40": (run_chain, 40),
    "async_tasks": (run_async_tasks, [84] * 5),
}


class _DriverOnly(list):
    """A list that travels to workers as an empty list (flow bodies are pickled
    by value with their globals when the task context is serialized)."""

    def __reduce__(self):
        return (list, ())


PARENT_REFS = _DriverOnly()  # weak references to parents, for the no-cycle test


def run_weakly_watched_parent(runner):
    """Keep only a weak reference to the parent; the test checks when it dies."""

    def watched():
        import weakref

        parent = slow.submit(1)
        PARENT_REFS.append(weakref.ref(parent))
        child = inc.submit(parent)
        del parent
        alive_while_child_runs = PARENT_REFS[-1]() is not None
        return alive_while_child_runs, child.result()

    return _run(watched, runner, "weakly-watched-parent")


def run_uninstall_mid_flow(runner):
    """Submit a dependent with the shim on, uninstall, then wait for it."""

    def uninstall_mid_flow():
        import prefect_future_anchor

        child = inc.submit(slow.submit(1))
        anchored = prefect_future_anchor.live_anchors() >= 1
        prefect_future_anchor.uninstall()
        return anchored, child.result()

    return _run(uninstall_mid_flow, runner, "uninstall-mid-flow")


@task
def touch(directory, i):
    """Fire-and-forget work: takes a moment, then leaves a file behind."""
    time.sleep(0.5)
    with open(f"{directory}/{i}.done", "w") as handle:
        handle.write("done")


@task
def blocker(directory, name):
    """Runs until the test creates ``release`` (bounded), recording its process id."""
    import os
    from pathlib import Path

    Path(directory, f"{name}.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path(directory, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    Path(directory, f"{name}.done").write_text("done")


def run_fire_and_forget(runner, directory, n=10):
    def fire_and_forget():
        for i in range(n):
            touch.submit(directory, i)

    return _run(fire_and_forget, runner, "fire-and-forget")


def run_fire_and_forget_async(runner, directory, n=10):
    async def fire_and_forget_async():
        for i in range(n):
            touch.submit(directory, i)

    return asyncio.run(flow(fire_and_forget_async, name="fire-and-forget-async", task_runner=runner)())


def run_left_blocking(runner, directory):
    """Leave one run blocked (and started) when the flow ends; report its task run id."""

    def left_blocking():
        from pathlib import Path

        future = blocker.submit(directory, "slow")
        started = Path(directory, "slow.pid")
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline:  # wait until it runs
            time.sleep(0.05)
        return str(future.task_run_id)

    return _run(left_blocking, runner, "left-blocking")


def run_rounds(runner, rounds):
    """``rounds`` x submit then wait; returns how many runs are still tracked."""

    def rounds_flow():
        import prefect_future_anchor
        from prefect.context import FlowRunContext
        from prefect_future_anchor.drain import inflight_of

        for i in range(rounds):
            inc.submit(i).wait()
        prefect_future_anchor.wait_released(60)
        return len(inflight_of(FlowRunContext.get().task_runner))

    return _run(rounds_flow, runner, "rounds")
