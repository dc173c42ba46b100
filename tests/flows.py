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
    await asyncio.sleep(PARENT_SECONDS)
    return 42


@task
async def atask2(x):
    await asyncio.sleep(0)
    return x * 2


def _run(body, runner, name):
    return flow(body, name=name, task_runner=runner, log_prints=False)()


# The variants' bodies, each run inside a flow; module-level so they travel to
# workers by reference.  Each drops its parents exactly as the bug report does.


def seed_body():
    results = []
    for _ in range(10):
        r1 = task1.submit()
        results.append(task2.submit(r1))
    wait(results)
    return [f.result() for f in results]


def nested_body():
    return total.submit([slow.submit(1), slow.submit(2)], {"x": slow.submit(3)}).result()


def wait_for_body():
    return done_marker.submit(wait_for=[slow.submit(1)]).result()


def map_unmapped_body():
    return [f.result() for f in add.map([1, 2, 3], unmapped(slow.submit(10)))]


def _diamond_child():
    top = slow.submit(5)
    return add.submit(inc.submit(top), inc.submit(top))


def diamond_body():
    return _diamond_child().result()


def chain15_body(depth=15):
    future = slow.submit(0)
    for _ in range(depth):
        future = inc.submit(future)
    return future.result()


def async_tasks_body():
    results = []
    for _ in range(5):
        results.append(atask2.submit(atask1.submit()))
    wait(results)
    return [f.result() for f in results]


#: name -> (body, expected result)
VARIANTS = {
    "seed": (seed_body, [84] * 10),
    "nested": (nested_body, 6),
    "wait_for": (wait_for_body, "after"),
    "map_unmapped": (map_unmapped_body, [11, 12, 13]),
    "diamond": (diamond_body, 12),
    "chain15": (chain15_body, 15),
    "async_tasks": (async_tasks_body, [84] * 5),
}


def run_seed(runner):
    return _run(seed_body, runner, "seed")


def run_orphan(runner, directory):
    """A run submitted, never waited for, nothing depends on it, and still running when
    the flow ends: ``blocker`` runs until the test releases it after the flow."""

    def orphan():
        blocker.submit(directory, "orphan")
        return task1.submit().result()

    return _run(orphan, runner, "orphan")


def every_variant(skip=()):
    """Every variant in one flow run (one driver connection per runner): for each,
    its result and how many false warnings it logged, read from ``WARNINGS[0]``
    (a counter the test installs) after its parents were dropped and collected."""
    import gc

    counter = WARNINGS[0] if WARNINGS else None
    out = {}
    for name, (body, _expected) in VARIANTS.items():
        if name in skip:
            continue
        before = counter.count if counter else 0
        result = body()
        gc.collect()
        out[name] = (result, (counter.count if counter else 0) - before)
    return out


def run_every_variant(runner, counter, skip=()):
    WARNINGS[:] = [counter]
    try:
        return flow(every_variant, name="every-variant", task_runner=runner, log_prints=False)(skip=list(skip))
    finally:
        WARNINGS[:] = []


class _DriverOnly(list):
    """A list that travels to workers as an empty list (flow bodies are pickled
    by value with their globals when the task context is serialized)."""

    def __reduce__(self):
        return (list, ())


PARENT_REFS = _DriverOnly()  # weak references to parents, for the no-cycle test
WARNINGS = _DriverOnly()  # the test's warning counter, read by every_variant in the driver


class Revivable:
    """A result that counts, per process, how often it is unpickled: the driver's
    count says whether anything fetched a run's value into the driver."""

    def __reduce__(self):
        return (_revive, ())


REVIVED = []


def _revive():
    REVIVED.append(1)
    return Revivable()


@task
def make_revivable():
    time.sleep(PARENT_SECONDS)  # still running when user code drops its future
    return Revivable()


@task
def consume(value):
    return isinstance(value, Revivable)


def fetch_probe_body():
    children = [consume.submit(make_revivable.submit()) for _ in range(3)]
    return [child.result() for child in children]


def run_fetch_probe(runner):
    """Three parents whose values only their children use; returns how many
    values were unpickled in this (the driver's) process meanwhile."""
    before = len(REVIVED)
    assert _run(fetch_probe_body, runner, "fetch-probe") == [True] * 3
    import gc

    gc.collect()
    return len(REVIVED) - before


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


#: Called by :func:`seed_pairs_body` once its first pair is submitted: a test's rendezvous
#: with threads that must overlap the later submits (module-level: the flow body
#: travels to the workers by reference, in the serialized context).
AFTER_FIRST_PAIR = [lambda: None]


def seed_pairs_body(pairs=10):
    results = []
    for i in range(pairs):
        results.append(task2.submit(task1.submit()))
        if i == 0:
            AFTER_FIRST_PAIR[0]()
    return [f.result() for f in results]


def run_seed_pairs(runner, name="seed-pairs"):
    return _run(seed_pairs_body, runner, name)


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
    """``rounds`` x submit then wait; returns how many runs were held, and how many still are."""

    def rounds_flow():
        import prefect_future_anchor
        from prefect.context import FlowRunContext
        from prefect_future_anchor.anchor import held_by

        for i in range(rounds):
            inc.submit(i).wait()
        prefect_future_anchor.wait_released(60)
        runs = held_by(FlowRunContext.get().task_runner)
        return runs.ever_held, len(runs)

    return _run(rounds_flow, runner, "rounds")


def run_dropping_blockers(runner, directory, n=1, timeout_seconds=None, name="dropping-blockers"):
    """Submit ``n`` blockers and keep none; return once they all run.  The flow run's
    id is written to ``directory/flow_run_id`` first, for a test watching from
    another thread.  Returns the flow run's final state."""
    from pathlib import Path

    def dropping_blockers():
        from prefect.runtime import flow_run

        Path(directory, "flow_run_id").write_text(str(flow_run.id))
        for i in range(n):
            blocker.submit(directory, f"b{i}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(Path(directory, f"b{i}.pid").exists() for i in range(n)):
            time.sleep(0.05)
        return n

    return flow(dropping_blockers, name=name, task_runner=runner, timeout_seconds=timeout_seconds)(return_state=True)


def run_dropping_blockers_async(runner, directory, n=1, timeout_seconds=None, name="dropping-blockers-async"):
    """:func:`run_dropping_blockers` as an async flow."""
    from pathlib import Path

    async def dropping_blockers_async():
        from prefect.runtime import flow_run

        Path(directory, "flow_run_id").write_text(str(flow_run.id))
        for i in range(n):
            blocker.submit(directory, f"b{i}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(Path(directory, f"b{i}.pid").exists() for i in range(n)):
            await asyncio.sleep(0.05)
        return n

    return asyncio.run(
        flow(dropping_blockers_async, name=name, task_runner=runner, timeout_seconds=timeout_seconds)(return_state=True)
    )


def run_generator_dropping(runner, directory):
    """A generator flow that submits a run, keeps nothing and yields; the caller
    stops consuming after the first value (Prefect then completes the run and
    closes the generator: the runner exits with GeneratorExit)."""

    def generator_dropping():
        touch.submit(directory, 0)
        yield 1
        yield 2

    for value in flow(generator_dropping, name="generator-dropping", task_runner=runner)():
        return value


def run_parent_of_dropping_child(child_runner, directory, n=3):
    """A parent flow (default runner) whose subflow, on ``child_runner``, drops ``n``
    runs; returns (parent flow run id, child flow run id)."""
    from prefect.runtime import flow_run

    def child():
        for i in range(n):
            touch.submit(directory, i)
        return str(flow_run.id)

    def parent():
        child_id = flow(child, name="dropping-child", task_runner=child_runner)()
        return str(flow_run.id), child_id

    return flow(parent, name="parent-of-dropping-child")()
