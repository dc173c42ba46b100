"""What a submit costs the user, stock vs patched, with workers running the tasks (issue 21).

    python benchmarks/submit.py                        # Dask and Ray, 12 alternations of 100 submits
    python benchmarks/submit.py --runners dask --shapes scalar --alternations 24
    python benchmarks/submit.py --runners dask --no-previous   # without the previous Dask design's side
    python benchmarks/submit.py --runners dask --pin --save submit.json   # the flow on a CPU of its own
    python benchmarks/submit.py --quick                # shows it works; its figures are not verdicts

The case a user is in: a cluster whose worker runs the tasks while the flow
submits (Dask: a ``LocalCluster`` of one worker process with one thread; Ray: a
local Ray of this process with one CPU), inside one flow.  Each batch is
``use.submit(up)`` ``batch`` times (one upstream future; scalar parameters, or
the same plus a 20,000-element list), timed as one loop; then the batch is left
to finish (untimed) so every batch starts from an idle worker.

Batches alternate between the sides, the order rotated every alternation (a
multiple of the number of sides, so each side goes first equally often: a batch
that follows another side's pays for what that side left, and a median over
alternations that favour one side is pulled toward it), and the shim is toggled
between them with ``install()`` / ``uninstall()``: the
stock side is then stock Prefect through and through (no wrapper in the call,
no ``client`` property of the shim, no ``__del__`` wrapper), and whatever the
patched submits set going beside the submitting thread (Dask's completion
callbacks on the client's event loop and its callback thread, Ray's watcher)
runs during the patched batches only, where a user would pay for it.  Reported,
as the median over the alternations of the per-batch ratio patched / stock (and
the ratio of the totals): the wall time of the submit loop (what the user
waits), the flow process's CPU over all its threads during the loop, the
submitting thread's own CPU, and the process's CPU per run over the batch's
whole life (the loop, then every run resolved and released: the completion
work the shim adds on the client's event loop counts here wherever it falls);
and the shim's own work inside a patched submit (``shim_work_timer``) and, on
Dask, its completion work on the client's event loop per run
(``loop_work_timer``), which do not depend on the machine's noise much.  Each median ratio comes with its 95%
bootstrap interval (the alternations resampled): a batch-to-batch spread of
0.7-1.6 makes the median of 24 alternations uncertain by several percent, so a
goal of 1.02 is met only when the whole interval is under it.  Where
``<runner>.context-once`` applies the patched sides serialize a submit's settings
once per settings state, and the submitting thread's CPU has a goal of a third
of stock's (issue 36).  ``--pin`` keeps
the flow process on one CPU and the Prefect server and the workers on the
others, as when the cluster runs on other machines: the submitting thread then
shares its CPU only with its own process (the client's event loop, where the
shim's completion work runs, and the in-process scheduler).  On Dask a third side, ``previous``,
is the previous design (``dask_runner.BATCHED = False``: one
``Future.add_done_callback`` per run, what users measured at 1.05-1.08), in
the same alternations: the benchmark shows what it can tell apart.

The benchmark this one replaces alternated single submits against a scheduler
with no workers: a submit took 60 ms there (nothing drained the scheduler's
queue), the event loop had no completions to deliver, and the shim's cost
vanished (0.936 read as noise while a user saw 1.05-1.08).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import math
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402  (sets the environment before prefect is imported)

SHAPES = {
    "scalar parameters": lambda: None,
    "20,000-element list parameter": lambda: list(range(20_000)),
}
RUNNERS = ("dask", "ray")
#: The sides each runner alternates: stock, this design, and on Dask the previous design.
SIDES = {"dask": ("stock", "patched", "previous"), "ray": ("stock", "patched")}
#: What is sampled per batch and side (per patched submit also: the shim's own work).
WHAT = {
    "wall": "wall time per submit",
    "cpu": "the flow process's CPU per submit (all its threads, over the submit loop)",
    "thread cpu": "the submitting thread's CPU per submit",
    "life cpu": "the flow process's CPU per run over the batch's whole life (submits, completions, releases)",
    "gc": "time in Python's cyclic garbage collector per submit (any thread, over the submit loop)",
    "full gc": "full (generation 2) collections per 100 submits (over the submit loop)",
    "typical wall": "the batch's median submit, wall time",
    "typical thread cpu": "the batch's median submit, the submitting thread's CPU",
    "resolved cpu": ("the flow process's CPU per run from the first submit until every run resolved (the same "
                     "moment on both sides; life cpu also counts the patched side's wait for its releases, during "
                     "which every thread of the process goes on using CPU)"),
}
MEASURES = tuple(WHAT)
#: The collector's figures, reported as medians and totals (a batch often has none).
COLLECTOR = ("gc", "full gc")


def interval(ratios: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple:
    """A 95% bootstrap interval of the median of ``ratios`` (the alternations
    resampled with replacement): what the median could have read with other
    draws of the same noise.  A goal is met only if the whole interval is under it."""
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


#: ``--pin``: the CPU the flow process keeps to itself (every other process of
#: the benchmark, the Prefect server and the cluster's workers, gets the others).
FLOW_CPU = 0


def pin_others() -> Optional[set]:
    """Before the server and the cluster start: this process (and so every
    process it starts from now on) on every CPU but ``FLOW_CPU``; None where
    there is one CPU or no affinity call (nothing is pinned then)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    if FLOW_CPU not in cpus or len(cpus) < 2:
        return None
    os.sched_setaffinity(0, cpus - {FLOW_CPU})
    return cpus - {FLOW_CPU}


def pin_flow() -> None:
    """Once they run: every thread of this process (the submitting thread, the
    client's event loop, the in-process scheduler) on ``FLOW_CPU``; threads
    started later inherit it."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(tid), {FLOW_CPU})


def _up(x):
    return x + 1


def _use(x, items=None):
    return x if items is None else x + len(items)


@functools.lru_cache(maxsize=None)
def _tasks():
    """``up`` and ``use``, made once prefect may be imported (after the server is up);
    their functions travel to the workers by reference to this module."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    return tuple(task(fn, name=fn.__name__[1:], cache_policy=NO_CACHE, persist_result=False) for fn in (_up, _use))


def _clocked(inner: Callable[..., Any], record: Callable[[float], None]) -> Callable[..., Any]:
    """``inner``, passing the wall time of each of its calls to ``record``."""

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            record(time.perf_counter() - start)

    return timed


@contextlib.contextmanager
def shim_work_timer(samples: List[float], integration=None):
    """Time the shim's bookkeeping in each patched submit (``_hold``) of the
    runtime ``integration`` (default: Dask's)."""
    if integration is None:
        from prefect_future_anchor.dask_runner import runtime as integration

    integration._hold = _clocked(integration._hold, samples.append)
    try:
        yield
    finally:
        del integration._hold  # back to the class's method


class _Steps:
    """An awaitable that runs ``coroutine`` and adds the wall time of each of its
    steps (each ``send``/``throw``: the code that runs on the loop between two waits)
    to ``spent[0]``."""

    def __init__(self, coroutine: Any, spent: List[float]) -> None:
        self._coroutine, self._spent = coroutine, spent

    def __await__(self):
        value, error = None, None
        while True:
            start = time.perf_counter()
            try:
                step = self._coroutine.send(value) if error is None else self._coroutine.throw(error)
            except StopIteration as stop:
                self._spent[0] += time.perf_counter() - start
                return stop.value
            self._spent[0] += time.perf_counter() - start
            try:
                value, error = (yield step), None
            except BaseException as exc:  # noqa: B036 - handed to the coroutine, as asyncio would
                value, error = None, exc


@contextlib.contextmanager
def loop_work_timer(spent: List[float], raw: Any) -> Iterator[None]:
    """Dask, this design: add to ``spent[0]`` the time the shim's completion work
    takes on the client's event loop, where ``raw``'s client runs it: every look
    of ``Completions._take`` and every step of the coroutine it starts per run
    (distributed's ``done_callback``, which ends in the shim's ``deliver`` and the
    release).  The loop's own machinery around them is not counted."""
    from prefect_future_anchor import dask_runner

    completions = dask_runner._completions(raw)
    if completions is None:
        yield
        return
    waiter = completions._waiter

    async def timed_waiter(*args: Any) -> Any:
        return await _Steps(waiter(*args), spent)

    def add(seconds: float) -> None:
        spent[0] += seconds

    completions._waiter, completions._take = timed_waiter, _clocked(completions._take, add)
    try:
        yield
    finally:
        completions._waiter = waiter
        del completions._take  # back to the class's


def _integration(runner: str) -> Any:
    if runner == "dask":
        from prefect_future_anchor.dask_runner import runtime
    else:
        from prefect_future_anchor.ray_runner import runtime
    return runtime


def _side(side: str) -> None:
    import prefect_future_anchor
    from prefect_future_anchor import dask_runner

    dask_runner.BATCHED = side != "previous"
    if side == "stock":
        prefect_future_anchor.uninstall()
    else:
        prefect_future_anchor.install()


class _Collections:
    """Time spent in the cyclic garbage collector, and full collections, while on."""

    def __init__(self) -> None:
        self.on, self.seconds, self.full, self._started = False, 0.0, 0, 0.0

    def __call__(self, phase: str, info: Dict[str, int]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.full += info.get("generation") == 2


_COLLECTIONS = _Collections()
gc.callbacks.append(_COLLECTIONS)


def _shim_threads_cpu() -> float:
    """CPU seconds used so far by the shim's own threads (named ``prefect-future-anchor*``:
    Ray's watcher, Dask's error thread), read from each thread's CPU clock."""
    import threading

    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith("prefect-future-anchor") and thread.ident is not None:
            with contextlib.suppress(OSError):  # it ended meanwhile
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def _batch(items: Optional[list], count: int, samples: Dict[str, List[float]], side: str, integration: Any) -> None:
    """One timed batch of ``count`` submits, then the wait for all of them."""
    import prefect_future_anchor

    up, use = _tasks()
    gc.collect()
    parent = up.submit(0)
    parent.wait(600)
    futures = []
    parameters = {"x": parent} if items is None else {"x": parent, "items": items}
    timer = shim_work_timer(samples[f"{side} shim work"], integration) if side != "stock" else contextlib.nullcontext()
    on_loop = [0.0]
    loop_timed = side == "patched" and integration.name == "dask"
    loop_timer = loop_work_timer(on_loop, parent.wrapped_future) if loop_timed else contextlib.nullcontext()
    _COLLECTIONS.seconds, _COLLECTIONS.full, _COLLECTIONS.on = 0.0, 0, True
    with loop_timer, timer:
        start, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
        own = _shim_threads_cpu()
        each: List[tuple] = []  # (wall, submitting thread's CPU) of every submit of this batch
        samples[f"{side} each"].append(each)
        for _ in range(count):
            one, one_thread = time.perf_counter(), time.thread_time()
            futures.append(use.submit(**parameters))
            each.append((time.perf_counter() - one, time.thread_time() - one_thread))
        elapsed, thread = time.perf_counter() - start, time.thread_time() - thread
        submitted = time.process_time() - cpu
        _COLLECTIONS.on = False
        for future in futures:
            future.wait(600)
        resolved = time.process_time() - cpu  # the same moment on both sides
        # Patched: until the shim let go of every run (its completion work is part of the side).
        assert prefect_future_anchor.wait_released(120), "patched runs not released 120 s after they resolved"
        life = time.process_time() - cpu
        own = _shim_threads_cpu() - own
    if loop_timed:
        samples[f"{side} shim loop work"].append(on_loop[0] / count)
    if side != "stock":
        samples[f"{side} shim thread work"].append(own / count)
    totals = {"wall": elapsed, "cpu": submitted, "thread cpu": thread, "life cpu": life, "resolved cpu": resolved,
              "gc": _COLLECTIONS.seconds, "full gc": _COLLECTIONS.full}
    for measure, value in totals.items():
        samples[f"{side} {measure}"].append(value / count)
    # The batch's median submit: what one submit costs with the batch's rare long ones
    # (a collection, a preemption, a loaded moment of the machine) left out; they are
    # in the totals above.
    samples[f"{side} typical wall"].append(statistics.median(wall for wall, _cpu in each))
    samples[f"{side} typical thread cpu"].append(statistics.median(cpu for _wall, cpu in each))


def _body(runner: str, alternations: int, batch: int, shapes: Sequence[str],
          sides: Sequence[str], pinned: bool = False) -> Dict[str, Dict[str, List[float]]]:
    if pinned:
        pin_flow()
    integration = _integration(runner)
    results: Dict[str, Dict[str, List[float]]] = {}
    try:
        for shape in shapes:
            items = SHAPES[shape]()
            keys = [f"{side} {m}" for side in sides
                    for m in MEASURES + ("shim work", "shim loop work", "shim thread work", "each")]
            samples = results[shape] = {key: [] for key in keys}
            warm = {key: [] for key in keys}
            for side in sides:
                _side(side)
                _batch(items, min(batch, 20), warm, side, integration)
            # The order rotates every alternation, each side first in as many:
            # whatever the batch after another side's pays for falls on all.
            for i in range(alternations):
                for side in sides[i % len(sides):] + sides[:i % len(sides)]:
                    _side(side)
                    _batch(items, batch, samples, side, integration)
    finally:
        _side("stock")
    return results


@contextlib.contextmanager
def _runner(kind: str) -> Iterator[Any]:
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        with services.dask_cluster(n_workers=1, threads_per_worker=1) as address:
            yield DaskTaskRunner(address=address)
        return
    from prefect_ray import RayTaskRunner

    temp_dir = tempfile.mkdtemp(prefix="pfa-ray-")  # not /tmp/ray: other programs' Rays live there
    try:
        yield RayTaskRunner(
            init_kwargs={
                "address": "local",
                "num_cpus": 1,
                "include_dashboard": False,
                "_temp_dir": temp_dir,
                "runtime_env": {"env_vars": {"PYTHONPATH": str(HERE)}},
            }
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def measure(kind: str, alternations: int, batch: int, shapes: Sequence[str] = tuple(SHAPES),
            sides: Sequence[str] = ("stock", "patched"), pinned: bool = False):
    """Per-submit seconds of each batch, by shape and side, on a fresh cluster of
    ``kind`` (``pinned``: the flow's threads on ``FLOW_CPU``, after :func:`pin_others`)."""
    from prefect import flow

    with _runner(kind) as runner:
        return flow(_body, name=f"bench-submit-{kind}", task_runner=runner, log_prints=False)(
            kind, alternations, batch, shapes, tuple(sides), pinned
        )


def available_runners() -> List[str]:
    import importlib.util

    return [kind for kind in RUNNERS if importlib.util.find_spec(f"prefect_{kind}") is not None]


def sides_of(kind: str, previous: bool = True) -> List[str]:
    """The sides ``kind`` alternates (without the previous design's if not ``previous``)."""
    return [side for side in SIDES[kind] if previous or side != "previous"]


#: What each patched side is, in the rows' names.
DESIGNS = {"patched": "this design", "previous": "previous design, one add_done_callback per run"}


def rows(rounds: int, batch: int, runners: Optional[Sequence[str]] = None, shapes: Sequence[str] = tuple(SHAPES),
         previous: bool = True, pinned: bool = False, raw: Optional[Dict[str, Any]] = None):
    """Table rows: (name, stock, patched, ratio, goal, met).  ``rounds``: alternations;
    ``raw``, if given, receives every per-batch sample by runner and shape.  A
    ratio's goal is met when its 95% interval (:func:`interval`) is under it: 1.02,
    and for the submitting thread's CPU a third where ``<runner>.context-once``
    applies (the patched side serializes the settings once per settings state)."""
    from importlib.metadata import version

    raw = {} if raw is None else raw
    for kind in runners or available_runners():
        release = f"prefect {version('prefect')}, prefect-{kind} {version('prefect-' + kind)}"
        sides = sides_of(kind, previous)
        if rounds % len(sides):
            raise ValueError(f"{kind}: {rounds} alternations do not let each of its {len(sides)} sides go first "
                             f"equally often; use a multiple of {len(sides)}")
        raw[kind] = {"release": release, "batch": batch, "samples": measure(kind, rounds, batch, shapes, sides, pinned),
                     "context_once": _context_once_applied(kind)}
    return table(raw)


def _context_once_applied(kind: str) -> bool:
    """Whether ``<kind>.context-once`` applies here (the patched sides then
    serialize the settings once per settings state: their goal for the
    submitting thread's CPU is a third of stock's, issue 36)."""
    import prefect_future_anchor

    try:
        report = prefect_future_anchor.install()
        return report.patch(f"{kind}.context-once").state == "applied"
    finally:
        prefect_future_anchor.uninstall()


#: The goal of the submitting thread's CPU per submit where ``<runner>.context-once`` applies (issue 36).
THIRD = 1 / 3
THREAD_MEASURES = ("thread cpu", "typical thread cpu")


def table(raw: Dict[str, Any]):
    """The rows of :func:`rows` from its per-batch samples (also as ``--save`` wrote them)."""
    out = []
    for kind, run in raw.items():
        release, batch = run["release"], run["batch"]
        for shape, samples in run["samples"].items():
            sides = [side for side in SIDES[kind] if samples.get(f"{side} wall")]
            for side in sides[1:]:
                label = f"{kind.capitalize()} submit with a worker, {shape}, {release}, {DESIGNS[side]}"
                for measure_name in MEASURES:
                    stock, patched = samples.get(f"stock {measure_name}"), samples.get(f"{side} {measure_name}")
                    if not stock or not patched:  # not recorded by the run that saved these samples
                        continue
                    if measure_name in COLLECTOR:  # often 0 in a batch: medians and totals, no per-batch ratio
                        unit = 1e6 if measure_name == "gc" else 100  # µs per submit; full collections per 100
                        out.append((f"{label}: {WHAT[measure_name]} (median of {len(stock)} batches of {batch}; "
                                    f"totals {sum(stock) * unit:.0f} / {sum(patched) * unit:.0f})",
                                    f"{statistics.median(stock) * unit:.2f}", f"{statistics.median(patched) * unit:.2f}",
                                    "–", "–", True))
                        continue
                    ratios = [p / s for p, s in zip(patched, stock)]
                    ratio = statistics.median(ratios)
                    low, high = interval(ratios)
                    total = sum(patched) / sum(stock)
                    goal = THIRD if run.get("context_once") and measure_name in THREAD_MEASURES else 1.02
                    out.append(
                        (f"{label}: {WHAT[measure_name]} (median of {len(ratios)} alternations of {batch}-submit "
                         f"batches, its 95% interval {low:.3f}-{high:.3f}; per-batch ratios "
                         f"{min(ratios):.3f}-{max(ratios):.3f}, ratio of the totals {total:.3f})",
                         f"{statistics.median(stock) * 1e6:.0f} µs", f"{statistics.median(patched) * 1e6:.0f} µs",
                         f"{ratio:.3f}", f"≤ {goal:.3g}", high <= goal)
                    )
                work_samples = samples[f"{side} shim work"]
                work = statistics.median(work_samples) * 1e6
                stock_wall = statistics.median(samples["stock wall"]) * 1e6
                out.append(
                    (f"{label}: the shim's own work per patched submit (median of {len(work_samples)})", "–",
                     f"{work:.0f} µs", f"{1 + work / stock_wall:.4f}", "≤ 1.02", 1 + work / stock_wall <= 1.02)
                )
                own_samples = samples.get(f"{side} shim thread work") or []
                if any(own_samples):
                    own = statistics.median(own_samples) * 1e6
                    out.append(
                        (f"{label}: the CPU of the shim's own threads per run (Ray's watcher: its rounds, the crash "
                         f"check of each completion, the releases; median of {len(own_samples)} batches; the ratio: "
                         f"that and the shim's work in a submit against a stock submit)",
                         "–", f"{own:.0f} µs", f"{1 + (work + own) / stock_wall:.4f}", "≤ 1.02",
                         1 + (work + own) / stock_wall <= 1.02)
                    )
                loop_samples = samples[f"{side} shim loop work"]
                if loop_samples:
                    on_loop = statistics.median(loop_samples) * 1e6
                    both = 1 + (work + on_loop) / stock_wall
                    out.append(
                        (f"{label}: the shim's completion work per run on the client's event loop (median of "
                         f"{len(loop_samples)} batches; the ratio: both threads' shim work against a stock submit)",
                         "–", f"{on_loop:.0f} µs", f"{both:.4f}", "≤ 1.02", both <= 1.02)
                    )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default=",".join(available_runners()))
    parser.add_argument("--alternations", type=int, default=12, help="a multiple of the sides (Dask 3, Ray 2)")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--shapes", default="scalar,list", help="scalar, list or both (comma-separated)")
    parser.add_argument("--no-previous", action="store_true",
                        help="no side for the previous Dask design (one add_done_callback per run)")
    parser.add_argument("--quick", action="store_true", help="6 alternations of 10 submits")
    parser.add_argument("--pin", action="store_true",
                        help=f"the flow process on CPU {FLOW_CPU}, the server and the workers on the others")
    parser.add_argument("--save", metavar="FILE", help="write every per-batch sample to FILE (JSON)")
    parser.add_argument("--table", metavar="FILE", help="measure nothing: the rows of samples --save wrote")
    args = parser.parse_args(argv)
    if args.table:
        saved = json.loads(Path(args.table).read_text())
        print(f"{saved['command']} (saved samples: {args.table})")
        for row in table(saved["runners"]):
            print(row)
        return 0
    alternations, batch = (6, 10) if args.quick else (args.alternations, args.batch)
    runners = [r for r in args.runners.split(",") if r]
    unknown = sorted(set(runners) - set(SIDES))
    if unknown:
        parser.error(f"--runners: unknown {', '.join(unknown)}; use {', '.join(RUNNERS)}")
    sides = math.lcm(*(len(sides_of(r, not args.no_previous)) for r in runners))
    if alternations % sides:
        parser.error(f"--alternations must be a multiple of {sides}: each side goes first equally often")
    short = {"scalar": "scalar parameters", "list": "20,000-element list parameter"}
    unknown = sorted(set(args.shapes.split(",")) - set(short))
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)}; use scalar, list or scalar,list")
    shapes = [short[name] for name in short if name in args.shapes.split(",")]
    command = "python benchmarks/submit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"{command}; load average {os.getloadavg()[0]:.1f} at start", flush=True)
    pinned = False
    if args.pin:
        others = pin_others()
        if others is None:
            parser.error(f"--pin needs CPU {FLOW_CPU} and another one to be usable by this process")
        pinned = True
        print(f"pinned: the flow on CPU {FLOW_CPU}, the server and the workers on {sorted(others)}", flush=True)
    raw: Dict[str, Any] = {}
    with services.prefect_server():
        for row in rows(alternations, batch, runners, shapes, not args.no_previous, pinned, raw):
            print(row, flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps({"command": command, "runners": raw}, indent=1))
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    import submit  # as an importable module: the tasks' functions travel to the workers by reference

    sys.exit(submit.main())
