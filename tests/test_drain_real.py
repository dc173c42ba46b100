"""No silent loss: runs submitted and not kept are drained when the runner exits.

Real Prefect server, real Dask cluster, real Ray head; the stock runner of the
same release loses fire-and-forget runs in the same test (the control).
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import psutil
import pytest

import prefect_future_anchor
from conftest import runners_available
import flows

RUNNERS = runners_available()


def done_files(directory):
    return len(list(Path(directory).glob("*.done")))


@pytest.mark.parametrize("kind", RUNNERS)
def test_fire_and_forget_completes_under_wait_and_stock_loses_some(kind, make_runner, shim, tmp_path, records):
    stock_dir, shim_dir = tmp_path / "stock", tmp_path / "shim"
    stock_dir.mkdir()
    shim_dir.mkdir()

    flows.run_fire_and_forget(make_runner(kind), str(stock_dir))
    stock_done = done_files(stock_dir)
    records.records.clear()

    shim()  # default on_exit="wait"
    flows.run_fire_and_forget(make_runner(kind), str(shim_dir))
    assert done_files(shim_dir) == 10
    assert stock_done < 10, "control: the stock runner should lose fire-and-forget runs"
    waits = records.messages(logging.INFO, "waiting up to")
    assert len(waits) == 1 and "touch" in waits[0]
    assert prefect_future_anchor.wait_released(60)
    gc.collect()
    assert records.messages(containing="garbage collected before it resolved") == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_fire_and_forget_in_async_flow(kind, make_runner, shim, tmp_path):
    stock_dir, shim_dir = tmp_path / "stock", tmp_path / "shim"
    stock_dir.mkdir()
    shim_dir.mkdir()
    flows.run_fire_and_forget_async(make_runner(kind), str(stock_dir))
    stock_done = done_files(stock_dir)

    shim()
    flows.run_fire_and_forget_async(make_runner(kind), str(shim_dir))
    assert done_files(shim_dir) == 10
    assert stock_done < 10, "control: the stock runner should lose fire-and-forget runs"


@pytest.mark.parametrize("kind", RUNNERS)
def test_uninstall_while_the_exit_drains(kind, make_runner, shim, tmp_path, records):
    """uninstall() from another thread while a runner's exit waits for its unkept
    runs: uninstall returns (it shares no lock with the exit), that exit
    still drains every run it held, nothing of the shim fails, the originals are
    back and nothing stays held.  Stock control first: the same flow loses runs."""
    import threading
    import time

    from prefect_future_anchor import guard

    runner_module = __import__(f"prefect_{kind}.task_runners", fromlist=["_"])
    runner_class = getattr(runner_module, {"dask": "DaskTaskRunner", "ray": "RayTaskRunner"}[kind])
    stock_methods = {name: runner_class.__dict__[name] for name in ("submit", "__exit__")}
    stock_dir, shim_dir = tmp_path / "stock", tmp_path / "shim"
    stock_dir.mkdir()
    shim_dir.mkdir()
    flows.run_fire_and_forget(make_runner(kind), str(stock_dir))
    stock_done = done_files(stock_dir)

    failures = guard.failures()
    shim(disable=["flow.drain-in-run"])  # the drain at the runner's exit, not inside the flow run
    records.records.clear()
    raced = []

    def uninstall_once_draining():
        deadline = time.monotonic() + 300
        while not records.messages(logging.INFO, "waiting up to") and time.monotonic() < deadline:
            time.sleep(0.01)
        done_before = done_files(shim_dir)
        raced.append((done_before, prefect_future_anchor.uninstall().installed))

    racer = threading.Thread(target=uninstall_once_draining)
    racer.start()
    flows.run_fire_and_forget(make_runner(kind), str(shim_dir))
    racer.join(300)
    ((done_before, still_installed),) = raced
    assert done_before < 10, "precondition: uninstall() came while runs were still unresolved"
    assert not still_installed
    assert done_files(shim_dir) == 10
    assert stock_done < 10, "control: the stock runner should lose fire-and-forget runs"
    assert guard.failures() == failures
    assert {name: runner_class.__dict__[name] for name in stock_methods} == stock_methods
    assert prefect_future_anchor.wait_released(60)


def _stock_attributes(kind):
    """Every attribute a patch of this runner may replace, as its classes (and Ray) hold them now."""
    module = __import__(f"prefect_{kind}.task_runners", fromlist=["_"])
    runner, future = {
        "dask": ("DaskTaskRunner", "PrefectDaskFuture"),
        "ray": ("RayTaskRunner", "PrefectRayFuture"),
    }[kind]
    owners = [getattr(module, runner), getattr(module, future)]
    if kind == "ray":
        import ray

        owners.append(ray)
    names = ("submit", "__exit__", "client", "wrapped_future", "__del__", "shutdown", "serialize_context")
    return {
        (getattr(owner, "__name__", owner), name): owner.__dict__.get(name, "<absent>")
        for owner in owners + [module]
        for name in names
    }


class Interleaver:
    """Makes another thread's install() / uninstall() land at named lines of the flow
    thread, deterministically: a trace function on the flow thread stops at each
    step's line (source text, not a number), hands the step's action to the other
    thread and waits until it is done.  Real code on both sides; only the timing
    is chosen."""

    def __init__(self, steps):
        import queue

        #: (function, text of its line, "install" | "uninstall"), in the order they must happen
        self.steps = [(function.__code__, _line_of(function, text), action) for function, text, action in steps]
        self.todo, self.done = queue.Queue(), queue.Queue()
        self.codes = {code for code, _line, _action in self.steps}
        self.log = []  # (line, action, whether the shim was installed when the action came)

    def start_here(self):
        """Called on the flow thread: trace it from the caller's frame on."""
        import sys

        sys.settrace(self._call)
        sys._getframe(1).f_trace = self._line

    def stop(self):
        import sys

        sys.settrace(None)

    def _call(self, frame, event, arg):
        return self._line if frame.f_code in self.codes else None

    def _line(self, frame, event, arg):
        if event == "line" and self.steps and (frame.f_code, frame.f_lineno) == self.steps[0][:2]:
            _code, line, action = self.steps.pop(0)
            self.todo.put((line, action))
            outcome = self.done.get(timeout=120)
            if isinstance(outcome, BaseException):
                raise outcome
        return self._line

    def serve(self):
        """The other thread: run each action when the flow thread stops for it."""
        while True:
            step = self.todo.get(timeout=300)
            if step is None:
                return
            line, action = step
            try:
                self.log.append((line, action, prefect_future_anchor.is_installed()))
                getattr(prefect_future_anchor, action)()
                self.done.put(None)
            except BaseException as exc:  # pragma: no cover - raised on the flow thread
                self.done.put(exc)


def _line_of(function, text):
    import inspect

    lines, first = inspect.getsourcelines(function)
    found = [first + i for i, line in enumerate(lines) if text in line]
    assert len(found) == 1, f"{text!r} is not one line of {function.__qualname__}"
    return found[0]


@pytest.mark.parametrize("kind", RUNNERS)
def test_uninstall_lands_inside_submit_and_the_exit(kind, make_runner, shim, tmp_path, records, monkeypatch):
    """Issue 35, section 7: uninstall() from another thread lands inside a real
    runner's wrapped ``submit`` (before the stock submit, after it, between holding
    the run and asking to be told of its end) and inside its wrapped ``__exit__``
    (before the drain); install() comes back between the seed's pairs.  Every run
    ends with its result, every run the shim held is released (no drain waits out
    its timeout), nothing of the shim fails or warns, the last uninstall() puts back
    exactly the stock attributes, and a later flow is stock (it loses
    fire-and-forget runs and the shim says nothing).  Stock control first: the same
    flow, no shim, gives the same results."""
    import threading

    from prefect_future_anchor import guard
    from prefect_future_anchor.runtime import Runtime

    stock = _stock_attributes(kind)
    assert flows.run_seed_pairs(make_runner(kind), "seed-pairs-stock") == [84] * 10

    inside = [
        (Runtime.submit_wrapper, "future = wrapped(*args, **kwargs)"),
        (Runtime.submit_wrapper, "if self.tracking:"),
        (Runtime._hold, "raw = future.wrapped_future"),
        (Runtime._hold, "self.when_done(raw, done, release)"),
    ]
    next_pair = (flows.seed_pairs_body, "results.append(task2.submit(task1.submit()))", "install")
    # the shim is installed when the flow starts: pair 2's first submit meets the first
    # point; install() before each later pair, uninstall() at the next point (pairs 2-9)
    points = [point + ("uninstall",) for point in inside * 2]
    steps = points[:1]
    for point in points[1:]:
        steps += [next_pair, point]
    steps += [
        (flows.seed_pairs_body, "return [f.result() for f in results]", "install"),
        (Runtime.exit_wrapper, "self.finish(instance,", "uninstall"),
    ]
    interleaver = Interleaver(steps)

    failures = guard.failures()
    records.records.clear()
    # Every run is kept and resolved before the exit: a drain that waits this long
    # waits for a run whose release was lost.  (From the environment: each install()
    # of the interleaving reads it again.)
    monkeypatch.setenv("PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT", "30")
    shim()
    other = threading.Thread(target=interleaver.serve)
    other.start()
    flows.AFTER_FIRST_PAIR[0] = interleaver.start_here
    try:
        results = flows.run_seed_pairs(make_runner(kind), "seed-pairs-interleaved")
    finally:
        interleaver.stop()
        flows.AFTER_FIRST_PAIR[0] = lambda: None
        interleaver.todo.put(None)
        other.join(300)
    assert interleaver.steps == [], "every step was reached"
    assert all(installed != (action == "install") for _line, action, installed in interleaver.log), interleaver.log
    assert results == [84] * 10
    assert guard.failures() == failures
    assert records.messages(logging.WARNING, "prefect-future-anchor") == []
    prefect_future_anchor.uninstall()
    assert _stock_attributes(kind) == stock
    assert prefect_future_anchor.wait_released(60)

    # a later flow is stock: it loses fire-and-forget runs and the shim says nothing
    records.records.clear()
    flows.run_fire_and_forget(make_runner(kind), str(tmp_path))
    assert done_files(tmp_path) < 10
    assert records.messages(containing="prefect-future-anchor") == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_cancel_names_and_really_cancels(kind, make_runner, shim, tmp_path, records, request):
    shim(on_exit="cancel")
    try:
        task_run_id = flows.run_left_blocking(make_runner(kind), str(tmp_path))
        warnings = records.messages(logging.WARNING, "cancelled 1 task run(s)")
        assert len(warnings) == 1
        assert "blocker" in warnings[0] and task_run_id in warnings[0]
        assert_really_cancelled(kind, tmp_path, request)
    finally:
        (tmp_path / "release").write_text("")


@pytest.mark.parametrize("kind", RUNNERS)
def test_drain_timeout_cancels_and_names_what_is_left(kind, make_runner, shim, tmp_path, records, request):
    shim(drain_timeout=2)
    try:
        task_run_id = flows.run_left_blocking(make_runner(kind), str(tmp_path))
        assert len(records.messages(logging.INFO, "waiting up to 2s for 1 unresolved")) == 1
        warnings = records.messages(logging.WARNING, "still unresolved after drain_timeout=2s")
        assert len(warnings) == 1 and task_run_id in warnings[0]
        assert_really_cancelled(kind, tmp_path, request)
    finally:
        (tmp_path / "release").write_text("")


def assert_really_cancelled(kind, directory, request):
    # the cancelled run's anchor is let go at exit, not left for a callback that
    # may never come once Ray is shut down
    assert prefect_future_anchor.wait_released(60)
    if kind == "ray":
        # force-cancel kills the worker process that ran the task
        pid = int((directory / "slow.pid").read_text())
        try:
            gone, alive = psutil.wait_procs([psutil.Process(pid)], timeout=60)
        except psutil.NoSuchProcess:
            alive = []
        assert alive == [], "the Ray worker running the cancelled task is still alive"
        (directory / "release").write_text("")  # nothing is left to write slow.done
        assert not (directory / "slow.done").exists()
    else:
        # the scheduler has forgotten the task: it will not run or be retried (Dask
        # cannot stop the thread already running it; that one ends at "release")
        from distributed import Client

        with Client(request.getfixturevalue("dask_address"), set_as_default=False) as client:
            keys = client.run_on_scheduler(
                lambda dask_scheduler: [str(k) for k, ts in dask_scheduler.tasks.items() if "blocker" in str(k)]
            )
        assert keys == []


@pytest.mark.parametrize("kind", RUNNERS)
def test_ignore_is_stock_behaviour(kind, make_runner, shim, tmp_path, records):
    shim(on_exit="ignore")
    flows.run_fire_and_forget(make_runner(kind), str(tmp_path))
    assert records.messages(containing="prefect-future-anchor") == []
    assert done_files(tmp_path) < 10


# Each round is a real Prefect task run (about 0.3 s of API work on the 2-core
# machine), so the suite keeps this to 20 rounds; benchmarks/memory.py runs 2,000.
ROUNDS = 20


@pytest.mark.parametrize("kind", RUNNERS)
def test_submit_wait_rounds_leave_tracking_empty(kind, make_runner, shim):
    shim()
    assert flows.run_rounds(make_runner(kind), ROUNDS) == (ROUNDS, 0)
    assert prefect_future_anchor.live_anchors() == 0


@pytest.mark.parametrize("kind", RUNNERS)
def test_a_cancel_that_raises_stops_no_other_cancel(kind, make_runner, shim, tmp_path, records, monkeypatch):
    """Issue 35, section 2: the runner's batched cancel fails (a closed client, say) and
    the first run's own cancel raises too: the other runs are still cancelled, every
    run is named, and the failing one is named as possibly running on."""
    from prefect_future_anchor import dask_runner, guard, ray_runner

    runtime = {"dask": dask_runner.runtime, "ray": ray_runner.runtime}[kind]
    stock_cancel = type(runtime).cancel
    refused = []

    def batch(raws):
        raise RuntimeError("simulated: the client is closed")

    def cancel(self, raw):
        if not refused:
            refused.append(raw)
            raise RuntimeError("simulated: this cancel failed")
        return stock_cancel(self, raw)

    monkeypatch.setattr(type(runtime), "cancel_batch", lambda self, raws: batch(raws))
    monkeypatch.setattr(type(runtime), "cancel", cancel)
    monkeypatch.setattr(guard, "_reported", set())
    shim(on_exit="cancel")
    try:
        state = flows.run_dropping_blockers(make_runner(kind), str(tmp_path), n=2)
        assert state.is_completed()
        warnings = records.messages(logging.WARNING, "cancelled 2 task run(s)")
        assert len(warnings) == 1 and warnings[0].count("blocker") == 2
        could_not = records.messages(logging.ERROR, "could not be cancelled")
        assert len(could_not) == 1 and could_not[0].count("blocker") == 1
        assert guard.failures() >= {"cancel at the end of the flow", "batched cancel at the end of the flow"}
    finally:
        (tmp_path / "release").write_text("")


@pytest.mark.parametrize("kind", RUNNERS[:1])
def test_a_drain_timeout_beyond_what_a_wait_takes_still_waits(kind, make_runner, shim, tmp_path, records, monkeypatch):
    """Issue 35, section 2: PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT=1e10 (over
    threading.TIMEOUT_MAX) waits for the runs like any other value (it made the wait
    raise OverflowError, and the runs were lost as stock loses them)."""
    from prefect_future_anchor import guard

    monkeypatch.setenv("PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT", "1e10")
    monkeypatch.setattr(guard, "_reported", set())
    report = shim()
    assert report.drain_timeout == 1e10
    flows.run_fire_and_forget(make_runner(kind), str(tmp_path))
    assert done_files(tmp_path) == 10
    assert guard.failures() == frozenset()
    assert len(records.messages(logging.INFO, "waiting up to 1e+10s")) == 1


@pytest.mark.parametrize("disable", [[], ["flow.drain-in-run"]], ids=["in-run", "at-exit"])
@pytest.mark.parametrize("kind", RUNNERS[:1])
def test_a_generator_flow_stopped_early_drains_its_runs(kind, disable, make_runner, shim, tmp_path, records):
    """Issue 35, section 2: a generator flow whose consumer stops after the first value
    is Completed by Prefect, which then closes it: its runner exits with
    GeneratorExit.  That is a clean end: the unkept run is waited for, not cancelled.
    Stock control: the stock runner loses it."""
    stock = tmp_path / "stock"
    stock.mkdir()
    assert flows.run_generator_dropping(make_runner(kind), str(stock)) == 1
    stock_done = done_files(stock)
    shim(disable=disable)
    assert flows.run_generator_dropping(make_runner(kind), str(tmp_path)) == 1
    assert prefect_future_anchor.wait_released(60)
    assert records.messages(containing="cancelled 1 task run(s)") == []
    assert done_files(tmp_path) == 1
    assert stock_done == 0, "control: the stock runner should lose the unkept run"
