"""The Ray completion watcher on a real Ray: refs released however they finish,
each callback once, and Ray going away (a user's own ``ray.shutdown()``, a
failing probe) ends in ``on_lost`` for everything, never in a new Ray.

The refs are calls of an async actor that finish when the test opens their
gate, so which refs are ready, and when, is the test's to say.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time

import pytest

from conftest import runners_available

pytestmark = pytest.mark.skipif("ray" not in runners_available(), reason="this environment has no prefect-ray")

DEADLINE = 120  # seconds: bounded polls on real conditions, for a loaded CI machine


def _poll(check, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def ray(ray_address):
    """This process as a driver of the session's Ray head, disconnected afterwards."""
    import ray

    ray.init(address=ray_address, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def make_gate(ray):
    @ray.remote(num_cpus=0, max_concurrency=10_000)
    class Gate:
        """``hold(i)`` returns once ``open`` has named ``i``."""

        def __init__(self):
            import asyncio

            self.events = {}
            self.asyncio = asyncio

        def _event(self, i):
            if i not in self.events:
                self.events[i] = self.asyncio.Event()
            return self.events[i]

        async def hold(self, i):
            await self._event(i).wait()

        async def open(self, ids):
            for i in ids:
                self._event(i).set()

    return Gate.remote()


class Calls:
    def __init__(self):
        self.ready = {}
        self.lost = {}
        self.threads = set()
        self._lock = threading.Lock()

    def _record(self, into, key):
        def call():
            with self._lock:
                into[key] = into.get(key, 0) + 1
                self.threads.add(threading.current_thread().name)

        return call

    def on_ready(self, key):
        return self._record(self.ready, key)

    def on_lost(self, key):
        return self._record(self.lost, key)


BLOCKERS_BEFORE, BLOCKERS_AFTER = 20, 5


@contextlib.contextmanager
def out_of_order(ray, watcher, control_watcher, middle: int):
    """Refs: ``BLOCKERS_BEFORE`` that stay pending, ``middle`` that the test opens,
    ``BLOCKERS_AFTER`` that stay pending, all watched by both watchers, whose windows
    (4 oldest, 2 newest) the blockers fill: only a sweep can find the middle ones.
    Yields the refs, each watcher's calls, ``open_middle()``, which opens the middle
    refs in a shuffled order and returns their indices once Ray says all are ready, and
    ``control_looked()``, which waits until the control watcher has probed since then
    (its first round may come after the other watcher has found them all)."""
    gate = make_gate(ray)
    refs = [gate.hold.remote(i) for i in range(BLOCKERS_BEFORE + middle + BLOCKERS_AFTER)]
    calls, control = Calls(), Calls()
    for w in (watcher, control_watcher):
        w.oldest, w.newest = 4, 2
    for i, ref in enumerate(refs):
        watcher.watch(ref, calls.on_ready(i), calls.on_lost(i))
        control_watcher.watch(ref, control.on_ready(i), control.on_lost(i))

    def open_middle():
        opened = list(range(BLOCKERS_BEFORE, BLOCKERS_BEFORE + middle))
        random.Random(17517).shuffle(opened)
        ray.get(gate.open.remote(opened))
        ready, _ = ray.wait([refs[i] for i in opened], num_returns=middle, timeout=DEADLINE, fetch_local=False)
        assert len(ready) == middle
        ready_at.append(control_watcher.rounds)
        return opened

    def control_looked():
        _poll(lambda: control_watcher.rounds > ready_at[-1], "a round of the control watcher after the refs were ready")

    ready_at = []
    try:
        yield refs, calls, control, open_middle, control_looked
    finally:
        for w in (watcher, control_watcher):
            w.pause()
            w.abandon()
        ray.get(gate.open.remote(range(len(refs))))


def test_refs_finishing_out_of_order_far_from_the_oldest_and_newest_are_released_once(ray):
    """Runs that finish behind older runs that do not (and ahead of newer ones) are
    found by the sweep; a watcher without the sweep never releases them."""
    from prefect_future_anchor.ray_watch import Watcher

    watcher, without_sweep = Watcher(), Watcher()
    without_sweep.max_chunk = 0
    middle = 300
    with out_of_order(ray, watcher, without_sweep, middle) as (refs, calls, control, open_middle, control_looked):
        watcher.watch(refs[BLOCKERS_BEFORE], calls.on_ready("again"), calls.on_lost("again"))
        opened = open_middle()
        _poll(lambda: len(calls.ready) == middle + 1, "every opened ref released")

        assert calls.ready == {**{i: 1 for i in opened}, "again": 1}
        assert calls.lost == {}
        assert calls.threads == {"prefect-future-anchor-ray"}
        assert watcher.pending() == BLOCKERS_BEFORE + BLOCKERS_AFTER
        # control: the same refs, the same windows, no sweep: nothing it could see was ready
        control_looked()
        assert control.ready == {} and without_sweep.pending() == len(refs)


def test_while_a_runner_exit_drains_runs_finished_out_of_order_are_found_at_the_drains_pace(ray, monkeypatch):
    """A running flow's sweep passes slowly (``SWEEP_FLOOR``, here a year); while the
    exit drains (``RayRuntime.draining``) its watcher sweeps at the drain's pace and
    finds them.  Control: a watcher of the same refs outside a drain finds none."""
    from prefect_future_anchor import ray_watch
    from prefect_future_anchor.ray_runner import RayRuntime

    monkeypatch.setattr(ray_watch, "SWEEP_FLOOR", 365 * 24 * 3600.0)
    runtime, running = RayRuntime(), ray_watch.Watcher()
    middle = 100
    with out_of_order(ray, runtime.watcher, running, middle) as (refs, calls, control, open_middle, control_looked):
        with runtime.draining():
            opened = open_middle()
            _poll(lambda: len(calls.ready) == middle, "every opened ref released during the drain")
        assert calls.ready == {i: 1 for i in opened} and calls.lost == {}
        assert runtime.watcher.pending() == BLOCKERS_BEFORE + BLOCKERS_AFTER
        control_looked()
        assert control.ready == {} and running.pending() == len(refs)


def test_a_users_ray_shutdown_gives_up_every_pending_ref_and_starts_no_new_ray(ray, monkeypatch):
    """``ray.wait`` on a Ray that is down starts a new one (its auto-init hook):
    the watcher must see Ray down, call ``on_lost`` for all, and stop."""
    from prefect_future_anchor.ray_watch import Watcher

    gate = make_gate(ray)
    refs = [gate.hold.remote(i) for i in range(50)]
    calls = Calls()
    watcher = Watcher()
    for i, ref in enumerate(refs):
        watcher.watch(ref, calls.on_ready(i), calls.on_lost(i))
    _poll(lambda: watcher.rounds >= 2, "the watcher's first rounds")
    thread = watcher._thread

    inits = []

    def init(*args, **kwargs):
        inits.append(threading.current_thread().name)
        raise RuntimeError("a new Ray would have been started here")

    monkeypatch.setattr(ray, "init", init)
    ray.shutdown()  # the user's own, mid-flow
    _poll(lambda: len(calls.lost) == len(refs), "on_lost for every pending ref")
    thread.join(DEADLINE)

    assert calls.lost == {i: 1 for i in range(len(refs))} and calls.ready == {}
    assert calls.threads == {"prefect-future-anchor-ray"}
    assert not thread.is_alive() and watcher.pending() == 0
    rounds = watcher.rounds
    assert not ray.is_initialized() and inits == []

    # A ref watched while Ray is down is given up at once: no probe, no new Ray, no spin.
    watcher.watch(refs[0], calls.on_ready("late"), calls.on_lost("late"))
    _poll(lambda: "late" in calls.lost, "on_lost for a ref watched after the shutdown")
    assert watcher.rounds == rounds and inits == [] and not ray.is_initialized()

    # positive control: the stock call the watcher makes would have started a Ray
    with pytest.raises(RuntimeError, match="a new Ray"):
        ray.wait([refs[1]], timeout=0, fetch_local=False)
    assert inits == ["MainThread"]


def test_pause_stops_the_thread_resume_releases_what_finished_meanwhile_abandon_calls_nothing(ray):
    from prefect_future_anchor.ray_watch import Watcher

    gate = make_gate(ray)
    refs = [gate.hold.remote(i) for i in range(40)]
    calls = Calls()
    probes = []

    def probe(listed, timeout):
        probes.append(len(listed))
        return ray.wait(listed, num_returns=len(listed), timeout=timeout, fetch_local=False)[0]

    watcher = Watcher(probe=probe)
    for i, ref in enumerate(refs):
        watcher.watch(ref, calls.on_ready(i), calls.on_lost(i))
    _poll(lambda: len(probes) >= 2, "the watcher's first rounds")
    thread = watcher._thread
    watcher.pause()
    assert not thread.is_alive()
    probed = len(probes)

    ray.get(gate.open.remote(range(10)))
    ready, _ = ray.wait(refs[:10], num_returns=10, timeout=DEADLINE, fetch_local=False)
    assert len(ready) == 10
    watcher.watch(refs[0], calls.on_ready("while paused"), calls.on_lost("while paused"))
    assert watcher._thread is None, "watch() started a thread while paused"
    assert len(probes) == probed and calls.ready == {}

    watcher.resume()
    _poll(lambda: len(calls.ready) == 11, "the refs that finished while paused")
    assert calls.ready == {**{i: 1 for i in range(10)}, "while paused": 1}

    watcher.pause()
    left = watcher.abandon()
    assert len(left) == 30 and watcher.pending() == 0
    assert calls.lost == {}, "abandon() called on_lost itself"
    for on_lost in left:
        on_lost()
    assert calls.lost == {i: 1 for i in range(10, 40)}
    watcher.resume()
    assert watcher._thread is None, "resume() started a thread with nothing pending"
    ray.get(gate.open.remote(range(40)))


def test_a_probe_that_raises_is_logged_once_and_every_ref_is_given_up(ray, records, monkeypatch):
    from prefect_future_anchor import guard
    from prefect_future_anchor.ray_watch import Watcher

    monkeypatch.setattr(guard, "_reported", set())
    gate = make_gate(ray)
    refs = [gate.hold.remote(i) for i in range(30)]
    calls = Calls()
    probes = []

    def probe(listed, timeout):
        probes.append(len(listed))
        if len(probes) > 1:
            raise RuntimeError("the probe broke")
        return ray.wait(listed, num_returns=len(listed), timeout=timeout, fetch_local=False)[0]

    watcher = Watcher(probe=probe)
    for i, ref in enumerate(refs[:20]):
        watcher.watch(ref, calls.on_ready(i), calls.on_lost(i))
    _poll(lambda: len(calls.lost) == 20, "on_lost for every pending ref")
    # again: a new thread, the same failure, still one log record
    for i, ref in enumerate(refs[20:], start=20):
        watcher.watch(ref, calls.on_ready(i), calls.on_lost(i))
    _poll(lambda: len(calls.lost) == 30, "on_lost for the refs watched afterwards")
    _poll(lambda: watcher._thread is None, "the watcher thread stopping")

    assert calls.lost == {i: 1 for i in range(30)} and calls.ready == {}
    assert ray.is_initialized(), "Ray was up all along: this was the shim's own failure"
    assert "ray.watch" in guard.failures()
    logged = records.messages(containing="internal error in ray.watch")
    assert len(logged) == 1
    ray.get(gate.open.remote(range(30)))
