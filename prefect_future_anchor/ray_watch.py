"""The Ray completion watcher: call back when ObjectRefs become ready, fetching nothing.

``ObjectRef._on_completed`` would fetch and deserialize each run's State (result
included) into the driver; ``ray.wait(fetch_local=False)`` learns readiness
without fetching.  But ``ray.wait`` costs about 1 µs per ref listed and keeps
nothing between calls (ray-project/ray#49905): a loop that waits on every
pending ref and starts again after each completion pays pending × completions
(10,000 runs completing at 200/s took 73% of a core).  So each round here lists
a bounded set: the oldest pending refs (runs mostly finish in submission
order), the newest (quick runs submitted behind long ones), and a slice of a
sweep over all the others.  The two windows follow the completions: each is
four times what it found ready in the last round, between a small floor and
its maximum (``Watcher.oldest``, ``Watcher.newest``), so a flow whose runs
finish a few a second lists a few dozen refs a round, not hundreds.  The sweep
is paced to pass over everything pending once every
max(``SWEEP_FLOOR``, pending × ``SWEEP_PER_PENDING``) seconds, at most
``SWEEP_BUDGET`` of a core (the whole round's thread CPU counted: planning,
probe and bookkeeping).  The driver's CPU then grows with completions, not
with pending × rounds, and a flow with few pending pays little: a flow of
2,000 runs on Ray used 21% of a core here, so a sweep at a fixed 1% of a core
was 5% of the flow's CPU (``benchmarks/flow_scale.py``).

Rounds follow the completions too: every ``POLL_SECONDS`` while each finds
``FEW`` ready refs or more, spaced out toward ``IDLE_SECONDS`` as they find fewer
(to the interval that would have found about ``FEW``).  In a running flow a
round cost the watcher's thread about 0.4 ms whatever it listed (``ray.wait``
alone has a fixed cost of about 35 µs of CPU and 90 µs of wall time), and a
completion about 40 µs (the crash check and the release): in flows whose runs
finish a few a second, rounds at a fixed ``POLL_SECONDS`` were most of the
watcher's CPU (benchmarks/lab/flow_threads/FINDINGS.md, "Rounds that follow the
completions").

Release bound: a ref in a window is seen within ``IDLE_SECONDS``
(``POLL_SECONDS`` while runs keep completing fast); any other by the sweep,
within two of its passes (one has run to 1.45 times its planned length): all
in all within max(``BOUND_FLOOR``, pending × ``BOUND_PER_PENDING``) wherever a
round costs at most ``SWEEP_PER_PENDING`` × ``SWEEP_BUDGET`` (2 µs) per ref
listed; where it costs more, the 1% cap slows the pass.  While a
runner's exit waits for its runs (:meth:`Watcher.hurry`), rounds come every
``POLL_SECONDS`` and the bound is max(``DRAIN_BOUND_FLOOR``, pending ×
``BOUND_PER_PENDING``) from the drain's start, so a run that finished out of
order does not hold the exit for the running flow's 16 s.  On this project's
2-core machine the slowest of 10,000 refs completing in random order at 200/s
was released 11.6 s after it was ready (``benchmarks/scale.py``; RESULTS.md,
round 15, source AD).
"""

from __future__ import annotations

import re
import sys
import threading
import time
from itertools import islice
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import guard

#: Round interval while runs keep completing fast; the longest a run among the
#: oldest/newest waits to be seen then.
POLL_SECONDS = 0.2
#: The longest interval: rounds that find fewer than FEW ready refs space out to it.
IDLE_SECONDS = 1.0
#: Rounds aim to find about this many ready refs each (between the two intervals).
FEW = 8
#: The sweep's pass over every pending ref: once per max(SWEEP_FLOOR, pending ×
#: SWEEP_PER_PENDING) seconds, using at most SWEEP_BUDGET of a core; while a
#: runner's exit waits for its runs (:meth:`Watcher.hurry`), once per
#: max(DRAIN_SWEEP_FLOOR, pending × SWEEP_PER_PENDING), rounds every POLL_SECONDS.
SWEEP_FLOOR = 8.0
DRAIN_SWEEP_FLOOR = 2.0
SWEEP_PER_PENDING = 200e-6
SWEEP_BUDGET = 0.01
#: The stated release bound for a run that finishes out of order: two passes,
#: max(BOUND_FLOOR, pending × BOUND_PER_PENDING) seconds; during a runner's exit,
#: max(DRAIN_BOUND_FLOOR, pending × BOUND_PER_PENDING).  (Measured: the slowest of
#: 10,000 completing in random order took 1.45 passes, RESULTS.md round 15.)
BOUND_FLOOR = 2 * SWEEP_FLOOR
DRAIN_BOUND_FLOOR = 2 * DRAIN_SWEEP_FLOOR
BOUND_PER_PENDING = 2 * SWEEP_PER_PENDING
#: A round that listed fewer refs than this does not update the per-ref cost the
#: sweep is paced by: the call's fixed cost would dominate it.
PACE_MIN_LISTED = 128
#: The windows never shrink below these (nor above ``Watcher.oldest`` / ``newest``).
MIN_OLDEST = 16
MIN_NEWEST = 8

Callback = Callable[[], None]
Probe = Callable[[List[Any], float], List[Any]]


def _ray() -> Any:
    return sys.modules["ray"]


def ray_wait_probe(refs: List[Any], timeout: float) -> List[Any]:
    """The refs of ``refs`` that are ready, fetching none of them."""
    return _wait()(refs, num_returns=len(refs), timeout=timeout, fetch_local=False)[0]


def _wait() -> Callable[..., Any]:
    """``ray.wait`` without Ray's auto-init wrapper (``ray._private.auto_init_hook``)
    when it has that shape: a wait that loses a race with ``ray.shutdown()`` then
    raises instead of starting a new Ray."""
    wait = _ray().wait
    inner = getattr(wait, "__wrapped__", None)
    if callable(inner) and getattr(getattr(wait, "__code__", None), "co_name", "") == "auto_init_wrapper":
        return inner
    return wait


#: The first Ray whose ``ray.init`` / ``ray.shutdown`` hold ``_connect_or_shutdown_lock``.
SHUTDOWN_LOCK_SINCE = (2, 48)


def _ray_version() -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", getattr(_ray(), "__version__", ""))[:3])


def lost_safeties() -> List[str]:
    """The guards against a race with ``ray.shutdown()`` that the installed Ray's
    private internals no longer offer (:func:`_shutdown_lock`, :func:`_wait`):
    the watcher still works, with that race open again.  Empty when every
    internal has the shape the shim was written for."""
    lost = []
    if _ray_version()[:2] >= SHUTDOWN_LOCK_SINCE and _shutdown_lock() is None:
        lost.append(
            "ray._private.worker._connect_or_shutdown_lock has moved: a watcher round can race a "
            "ray.shutdown() the shim does not wrap (such a race aborted the driver)"
        )
    if _wait() is _ray().wait:
        lost.append(
            "ray.wait's auto-init wrapper has changed: a watcher round that loses a race with "
            "ray.shutdown() can start a new local Ray"
        )
    return lost


def _shutdown_lock() -> Any:
    """Ray's own lock around ``ray.init`` / ``ray.shutdown`` (Ray 2.48+, private),
    or None.  Holding it across a probe means no shutdown can tear the core worker
    down under the probe: a ``ray.wait`` racing ``shutdown()`` aborted the driver."""
    worker = sys.modules.get("ray._private.worker")
    lock = getattr(worker, "_connect_or_shutdown_lock", None)
    if isinstance(lock, type(threading.RLock())):
        return lock
    return None


class _Entry:
    __slots__ = ("callbacks", "slot")

    def __init__(self) -> None:
        self.callbacks: List[Tuple[Callback, Callback]] = []
        self.slot = -1  # index in the current sweep list, -1 if not in it


class Watcher:
    """One daemon thread that calls back when ObjectRefs become ready, fetching nothing.

    What it keeps true: every pending ref is listed by a probe within the release
    bound (module docstring), while a round lists only a bounded number of refs.
    Three lists share the work, and each keeps one part of that promise:

    - the two windows (the oldest and the newest pending refs) are listed in every
      round, and rounds come at most ``IDLE_SECONDS`` apart while anything is
      pending and the watcher is not paused (``POLL_SECONDS`` during a drain);
    - the sweep is a snapshot of every pending ref, listed a slice a round from a
      cursor.  Its credit (how many refs it may list) grows with the time since the
      last round, at the pace of one whole pass per max(floor, pending ×
      ``SWEEP_PER_PENDING``) seconds, but never costing more than ``SWEEP_BUDGET``
      of a core.  A new snapshot is taken only when the cursor reaches the end, so a
      ref pending when a pass starts is listed in that pass, and one watched later
      in the next;
    - a ref is dropped from the sweep (its slot set to None) as soon as it is
      released, so the sweep holds no ref Ray could otherwise free.

    Everything else only tunes the cost: the windows grow and shrink with what they
    found (:meth:`_resize_windows`), rounds space out when they find little
    (:meth:`_schedule_next_round`), and the per-ref cost that caps the sweep is
    measured on the round's own thread CPU (:meth:`_learn_cost_per_ref`).

    It sleeps on a condition while nothing is pending, and :meth:`pause` and a first
    new run wake it at once.  Callbacks run on this thread, never on Ray's own,
    never under the lock.  Before each probe it checks ``ray.is_initialized()``:
    ``ray.wait`` on a Ray that is down would start a new one.  Finding Ray down, it
    gives up on every pending ref (their ``on_lost``) and stops until the next
    :meth:`watch`.
    """

    oldest = 256
    newest = 64
    max_chunk = 4096

    def __init__(self, probe: Optional[Probe] = None) -> None:
        self._probe: Probe = probe or ray_wait_probe
        self._pending: Dict[Any, _Entry] = {}
        self._removed = 0
        self._sweep: List[Any] = []
        self._cursor = 0
        self._credit = 0.0
        self._per_ref = 2.5e-6  # a round's thread CPU per ref listed (moving average)
        self._front = MIN_OLDEST  # this round's window sizes (they follow what the last found)
        self._back = MIN_NEWEST
        self._interval = POLL_SECONDS
        self._due = 0.0
        self._last = 0.0
        self._changed = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._paused = 0
        self._hurried = 0
        self.rounds = 0  # probe calls made (for the benchmarks)

    # -- the API the integration uses -------------------------------------------------

    def watch(self, ref: Any, on_ready: Callback, on_lost: Callback) -> None:
        """Call ``on_ready()`` once ``ref`` is ready, or ``on_lost()`` if Ray goes away first."""
        with self._changed:
            entry = self._pending.get(ref)
            if entry is None:
                entry = self._pending[ref] = _Entry()
            entry.callbacks.append((on_ready, on_lost))
            # The thread is woken only when it was idle (nothing pending).  A round at
            # its planned time sees a new run within IDLE_SECONDS anyway; waking it on
            # every submit cost the submitting thread a futex call and the watcher a
            # round per run, and pulling rounds in while runs are submitted cost a
            # slow flow a round every POLL_SECONDS for as long as it submits.
            if self._thread is None and not self._paused:
                self._start()
            elif len(self._pending) == 1 and len(entry.callbacks) == 1:
                self._changed.notify_all()

    def pause(self, timeout: float = 30) -> None:
        """Stop the thread (it finishes its current probe): no Ray call until :meth:`resume`."""
        with self._changed:
            self._paused += 1
            thread = self._thread
            self._changed.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def hurry(self) -> None:
        """Someone waits for the pending refs (a runner's exit drains its runs): until
        as many :meth:`unhurry` calls, round every ``POLL_SECONDS`` and sweep at the
        drain's pace, starting now."""
        with self._changed:
            self._hurried += 1
            self._interval = POLL_SECONDS
            self._due = min(self._due, time.monotonic())
            self._changed.notify_all()

    def unhurry(self) -> None:
        with self._changed:
            self._hurried = max(0, self._hurried - 1)

    def abandon(self) -> List[Callback]:
        """Drop every pending ref, calling nothing; return their ``on_lost`` callbacks."""
        with self._changed:
            return [on_lost for _ready, on_lost in self._take_all()]

    def resume(self) -> None:
        with self._changed:
            self._paused = max(0, self._paused - 1)
            if self._pending and self._thread is None and not self._paused:
                self._start()

    def pending(self) -> int:
        with self._changed:
            return len(self._pending)

    # -- the thread ---------------------------------------------------------------------

    def _start(self) -> None:
        self._due = time.monotonic() + POLL_SECONDS
        self._thread = threading.Thread(target=self._run, name="prefect-future-anchor-ray", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        me = threading.current_thread()
        try:
            while self._round(me):
                pass
        except Exception as exc:
            # The shim's own failure: let go of everything, as stock keeps nothing.
            guard.failed("ray.watch", exc)
            self._lose_all(me)
        finally:
            with self._changed:
                self._stopped(me)

    def _stopped(self, me: threading.Thread) -> None:
        """Forget this thread (under the lock), so the next :meth:`watch` or
        :meth:`resume` starts another."""
        if self._thread is me:
            self._thread = None

    def _round(self, me: threading.Thread) -> bool:
        with self._changed:
            while True:
                if self._paused or self._thread is not me:
                    self._stopped(me)
                    return False
                if not self._pending:
                    self._changed.wait()
                    continue
                wait = self._due - time.monotonic()
                if wait <= 0:
                    break
                self._changed.wait(wait)
            started, rounds = time.thread_time(), self.rounds
            refs, front, back = self._plan(time.monotonic())
        ready = self._ready(refs)
        if ready is None:
            self._lose_all(me)
            return False
        with self._changed:
            self._resize_windows(refs, ready, front, back)
            callbacks = [on_ready for ref in ready for on_ready, _lost in self._take(ref)]
            # The whole round's CPU paces the sweep (planning, probe and bookkeeping),
            # counted only for a round that probed (not one that found Ray's lock taken).
            cost = time.thread_time() - started if self.rounds != rounds else 0.0
            self._learn_cost_per_ref(len(refs), cost)
            self._schedule_next_round(len(ready))
        del refs, ready
        for callback in callbacks:
            try:
                callback()
            except Exception as exc:
                guard.failed("ray.watch callback", exc)
        return True

    def _ready(self, refs: List[Any]) -> Optional[List[Any]]:
        """The ready refs of ``refs``, or None if Ray is down (or went down under the probe)."""
        ray = _ray()
        lock = _shutdown_lock()
        if lock is not None and not lock.acquire(timeout=POLL_SECONDS):
            return []  # ray.init / ray.shutdown under way: look again next round
        try:
            if not ray.is_initialized():
                return None
            self.rounds += 1
            try:
                return self._probe(refs, 0)
            except Exception as exc:
                if not ray.is_initialized():
                    return None
                guard.failed("ray.watch", exc)
                return None
        finally:
            if lock is not None:
                lock.release()

    # -- bookkeeping (under the lock) ---------------------------------------------------

    def _plan(self, now: float) -> Tuple[List[Any], int, int]:
        """This round's refs: the oldest, then the newest, then what the sweep's
        credit pays for; and how many lead the list as the oldest and the newest."""
        self._earn_sweep_credit(now)
        front, back = min(self._front, self.oldest), min(self._back, self.newest)
        if len(self._pending) <= front + back:
            return list(self._pending), len(self._pending), 0
        refs = list(islice(self._pending, front))
        refs += islice(reversed(self._pending.keys()), back)
        return refs + self._spend_sweep_credit(refs), front, back

    def _earn_sweep_credit(self, now: float) -> None:
        """Add the refs the sweep may list for the time since the last round: at a
        pace that passes over every pending ref once per max(floor, pending ×
        ``SWEEP_PER_PENDING``) seconds, capped at ``SWEEP_BUDGET`` of a core by the
        measured cost per ref; never more than ``max_chunk`` saved up."""
        n = len(self._pending)
        floor = DRAIN_SWEEP_FLOOR if self._hurried else SWEEP_FLOOR
        per_second = min(n / max(floor, n * SWEEP_PER_PENDING), SWEEP_BUDGET / self._per_ref)
        self._credit = min(self.max_chunk, self._credit + (now - self._last) * per_second)
        self._last = now

    def _spend_sweep_credit(self, listed: List[Any]) -> List[Any]:
        """The next refs of the sweep, as many as the credit pays for, skipping those
        already ``listed`` (the windows) and those released.  At the end of the
        snapshot a new one is taken, at most once a round."""
        want = int(self._credit)
        if want <= 0:
            return []
        skip = set(listed)
        chunk: List[Any] = []
        restarted = False
        while len(chunk) < want:
            if self._cursor >= len(self._sweep):
                if restarted:
                    break
                restarted = True
                skip.update(chunk)  # the new pass may list again what the old one's tail did
                self._restart_sweep()
                continue
            # A slice at a time (C-level), not a ref at a time: the planning was half a
            # round's cost.  Released refs are None in the sweep.
            start = self._cursor
            part = self._sweep[start:start + want - len(chunk)]
            self._cursor = start + len(part)
            chunk += [ref for ref in part if ref is not None and ref not in skip]
        self._credit -= len(chunk)
        return chunk

    def _restart_sweep(self) -> None:
        """A new pass: a snapshot of every pending ref, each told its slot."""
        sweep = self._sweep = list(self._pending)
        for slot, ref in enumerate(sweep):
            self._pending[ref].slot = slot
        self._cursor = 0

    def _resize_windows(self, refs: List[Any], ready: List[Any], front: int, back: int) -> None:
        """Size the next round's windows by what this round found in each (its first
        ``front`` refs, then ``back``): four times as many, so a burst at the front
        widens them fast and a quiet flow keeps them small; never below the floors."""
        if not ready:
            found_front = found_back = 0
        else:
            seen = set(ready)
            found_front = sum(1 for ref in refs[:front] if ref in seen)
            found_back = sum(1 for ref in refs[front:front + back] if ref in seen)
        self._front = max(MIN_OLDEST, 4 * found_front)
        self._back = max(MIN_NEWEST, 4 * found_back)

    def _learn_cost_per_ref(self, listed: int, cost: float) -> None:
        """Fold this round's thread CPU per ref listed into the moving average that
        caps the sweep (rounds that listed few refs say more of the call's fixed
        cost than of the refs, and are left out)."""
        if listed >= PACE_MIN_LISTED and cost > 0:
            self._per_ref = max(1e-7, 0.8 * self._per_ref + 0.2 * cost / listed)

    def _schedule_next_round(self, found: int) -> None:
        """The next round comes after the interval that would have found about
        ``FEW`` ready refs at this round's rate (twice this one after a round that
        found nothing), kept between ``POLL_SECONDS`` and ``IDLE_SECONDS``; every
        ``POLL_SECONDS`` while a drain waits."""
        wanted = self._interval * FEW / found if found else self._interval * 2
        self._interval = POLL_SECONDS if self._hurried else min(IDLE_SECONDS, max(POLL_SECONDS, wanted))
        self._due = self._last + self._interval

    def _take(self, ref: Any) -> List[Tuple[Callback, Callback]]:
        entry = self._pending.pop(ref, None)
        if entry is None:
            return []
        if 0 <= entry.slot < len(self._sweep) and self._sweep[entry.slot] is ref:
            self._sweep[entry.slot] = None  # hold no ref Ray could otherwise free
        self._removed += 1
        if self._removed > 4096 and self._removed > len(self._pending):
            self._pending = dict(self._pending)  # a dict keeps deleted slots until it grows
            self._removed = 0
        return entry.callbacks

    def _take_all(self) -> List[Tuple[Callback, Callback]]:
        taken = [pair for entry in self._pending.values() for pair in entry.callbacks]
        self._pending = {}
        self._sweep = []
        self._cursor = 0
        self._removed = 0
        return taken

    def _lose_all(self, me: threading.Thread) -> None:
        with self._changed:
            self._stopped(me)
            lost = [on_lost for _ready, on_lost in self._take_all()]
        for on_lost in lost:
            try:
                on_lost()
            except Exception as exc:
                guard.failed("ray.watch callback", exc)
