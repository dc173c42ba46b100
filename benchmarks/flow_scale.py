"""Flows at the size users run, on Dask and on Ray, stock vs patched (issue 18 §2).

Each flow is the seed flow of upstream issue 17517 at scale: ``runs // 2`` x
``task2.submit(task1.submit())``, the parent's future dropped, every child waited
for and its result checked.  Figures per flow: wall time of the flow call and the
CPU of the flow's process (every thread: Prefect's, the Dask client's or Ray
driver's, the shim's), stock and patched.  The Dask cluster (one worker process,
two threads) or the Ray head (two CPUs) is started once, outside every figure;
each flow's runner connects to it, as production flows do.

Three ways to pair the sides, all on the same cluster and Prefect server:
- ``fresh`` (the default): every flow in a fresh interpreter (after an unmeasured
  warm-up flow of 20 runs in it), the order swapped every pair;
- ``alternate``: every flow in this one process, the order swapped every pair;
- ``duet``: a pair's two flows at the same time, each in a fresh interpreter
  (warmed up as in ``fresh``, then started together), so that whatever the machine
  does meanwhile falls on both sides ("duet benchmarking", Bulej et al. 2020).
  The speed of this machine drifts by about 10% between flows minutes apart (the
  flow thread's CPU for the same 2,000 submits read 72.8-87.4 s in one run), which
  pairs run one after the other carry into their ratios.  In a duet each flow has
  half the cluster, and a side that costs more slows the other too: the driver
  CPU is each side's own, the wall time that of a shared cluster.
Every way, the pairs follow one unmeasured flow of half the size on the new
cluster and server (the first large flow they serve runs long).
``--mode both`` runs the two at one size and prints the spread of their per-pair
ratios, the way to choose between them.  At 40 runs x 3 pairs (prefect 3.9.1,
load average 14-27) fresh processes were the less noisy (pair-ratio stdev: wall
0.125 vs 0.471, CPU 0.116 vs 0.178), and flows in one long process cost more
driver CPU and varied more (4.4-6.1 s per 40 runs) than in fresh ones (3.1-3.6 s).  The Prefect server is SQLite-backed, or
PostgreSQL-backed with ``PFA_PREFECT_DB=postgres`` (``services.postgres``).

The Ray head keeps a driver's idle worker processes for the driver's life
(``--ray-workers kept``, the default).  With Ray's default (``killed``), a flow's
length follows how many worker processes Ray starts during it, on either side:
prefect-ray's child ``ray.get``s its parent's ref inside the worker, a blocked
worker frees its CPU, the raylet starts another, and the idle extras are killed
after 1 s.  On 2026-12-04 (1,000 runs a flow, prefect 3.9.1) that was 58-88
starts a flow, about 2.2 s of wall each, and flows of 201-282 s on every side;
with the workers kept, 7-9 starts and 129-164 s
(benchmarks/lab/flow_threads/FINDINGS.md).  ``--ray-workers killed`` measures Ray's default.

Each Ray flow also records its watcher thread's CPU and rounds (``watcher_cpu``,
``watcher_rounds``: 0 on the stock side).  Research only: ``PFA_FLOW_SCALE_POLL_SECONDS=S`` sets the patched flows'
``ray_watch.POLL_SECONDS`` (the shortest interval between the watcher's rounds).

    python benchmarks/flow_scale.py --quick                  # 100 runs a flow, one pair per runner
    python benchmarks/flow_scale.py                          # 2,000 runs a flow, four pairs per runner
    PFA_PREFECT_DB=postgres python benchmarks/flow_scale.py  # the server on a PostgreSQL of its own
    python benchmarks/flow_scale.py --runner ray --runs 1000 --pairs 1
    python benchmarks/flow_scale.py --runner ray --ray-workers killed   # Ray's default worker pool
    python benchmarks/flow_scale.py --mode both --runs 200 --pairs 4 --runner dask
    python benchmarks/flow_scale.py --runner ray --mode duet --pairs 4
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402  (sets the environment before prefect is imported)

GOAL = 1.02
FULL_RUNS = 2000
WARM_UP_RUNS = 20
SIDES = ("stock", "patched")
#: the Ray head's idle workers for this run (``--ray-workers``), named in the rows
RAY_WORKERS = ["kept"]
NAMES = {"dask": "Dask (1 worker process x 2 threads)", "ray": "Ray (local head, 2 CPUs)"}


@functools.lru_cache(maxsize=None)
def _seed_tasks():
    """``task1``, ``task2`` of the seed, no cache key and no result storage: the figure is the runner's."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    @task(name="task1", cache_policy=NO_CACHE, persist_result=False)
    def task1():
        return 42

    @task(name="task2", cache_policy=NO_CACHE, persist_result=False)
    def task2(x):
        return x * 2

    return task1, task2


def seed_pairs(pairs: int) -> int:
    """The flow's body: the seed's pattern ``pairs`` times, only the children kept."""
    from prefect.futures import wait

    task1, task2 = _seed_tasks()
    children = [task2.submit(task1.submit()) for _ in range(pairs)]
    wait(children)
    return sum(child.result() for child in children)


def _runner(kind: str, address: str):
    if kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=address)
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=address)


def _switch(kind: str, side: str) -> None:
    import prefect_future_anchor

    if side == "patched":
        report = prefect_future_anchor.install()
        if f"{kind}.track" not in report.applied:
            raise RuntimeError(f"the shim did not patch {kind}: {report}")
    else:
        prefect_future_anchor.uninstall()


def one_flow(kind: str, side: str, runs: int, address: str) -> Dict[str, float]:
    """One flow of ``runs`` task runs on the given side; its wall time and this process's CPU."""
    import prefect_future_anchor
    from prefect import flow

    from prefect_future_anchor.demo import counting_gc_warnings

    runner = _runner(kind, address)  # imports the runner's module: the shim patches what is imported
    _switch(kind, side)
    watcher = _watcher_clock() if kind == "ray" else [0.0, 0]
    try:
        body = flow(seed_pairs, name=f"flow-scale-{kind}-{side}", task_runner=runner, log_prints=False)
        load = os.getloadavg()[0]
        with counting_gc_warnings() as warnings:
            cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
            result = body(runs // 2)
            wall, cpu, main = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - main
        if result != 84 * (runs // 2):
            raise RuntimeError(f"{kind} {side} flow returned {result}")
    finally:
        prefect_future_anchor.uninstall()
    # main_cpu: the flow's own thread (a sync flow runs its body, and every submit, on the calling thread)
    # watcher_cpu: the Ray watcher's thread (it ends at the runner's exit, inside the flow call)
    return {"wall": wall, "cpu": cpu, "main_cpu": main, "watcher_cpu": watcher[0], "watcher_rounds": watcher[1], "warnings": warnings.count,
            "load_start": load, "load_end": os.getloadavg()[0]}


#: Research only: the Ray watcher's shortest round interval in the patched flows (``ray_watch.POLL_SECONDS``).
POLL = "PFA_FLOW_SCALE_POLL_SECONDS"


def _watcher_clock() -> List[float]:
    """``[cpu, rounds]``: the CPU the shim's Ray watcher threads used so far, and their
    rounds (probes); each thread adds its own ``thread_time()`` and rounds when it ends.
    With ``PFA_FLOW_SCALE_POLL_SECONDS`` set, that is the watcher's shortest round
    interval instead of ``ray_watch.POLL_SECONDS``."""
    from prefect_future_anchor import ray_watch

    if os.environ.get(POLL):
        ray_watch.POLL_SECONDS = float(os.environ[POLL])
    spent = [0.0, 0]
    run = getattr(ray_watch.Watcher._run, "untimed", ray_watch.Watcher._run)  # once per process, however many flows

    def timed_run(self):
        rounds = self.rounds
        try:
            return run(self)
        finally:
            spent[0] += time.thread_time()
            spent[1] += self.rounds - rounds

    timed_run.untimed = run
    ray_watch.Watcher._run = timed_run
    return spent


#: Set for the two processes of a duet: the directory where each says it is warm.
DUET = "PFA_FLOW_SCALE_DUET"


def _meet(side: str) -> None:
    """In a duet's process, after its warm-up: say so, and wait (a readiness poll,
    bounded) until the other side has said so too."""
    meeting = os.environ.get(DUET)
    if not meeting:
        return
    (Path(meeting) / side).touch()
    deadline = time.monotonic() + 600
    while not all((Path(meeting) / other).exists() for other in SIDES):
        if time.monotonic() > deadline:
            raise RuntimeError("the other side of the duet did not warm up in 600 s")
        time.sleep(0.05)


def _start_flow(kind: str, side: str, runs: int, address: str, **env: str) -> "subprocess.Popen":
    return subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--side", kind, side, str(runs), address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, **env),
    )


def _flow_result(kind: str, side: str, proc: "subprocess.Popen") -> Dict[str, float]:
    try:
        stdout, stderr = proc.communicate(timeout=4 * 3600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {side} flow (fresh process) failed:\n{stderr[-4000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _fresh_flow(kind: str, side: str, runs: int, address: str) -> Dict[str, float]:
    return _flow_result(kind, side, _start_flow(kind, side, runs, address))


def _duet(kind: str, runs: int, address: str) -> Dict[str, Dict[str, float]]:
    """Both sides at once, each in a fresh process on the same cluster and server:
    whatever the machine does meanwhile (its speed drifts by 10% between flows
    minutes apart here) falls on both.  Each process warms up with a flow of
    ``WARM_UP_RUNS`` first and then waits for the other, so the measured flows
    start together."""
    procs: Dict[str, "subprocess.Popen"] = {}
    with tempfile.TemporaryDirectory(prefix="pfa-duet-") as meeting:
        try:
            for side in SIDES:
                procs[side] = _start_flow(kind, side, runs, address, **{DUET: meeting})
            return {side: _flow_result(kind, side, proc) for side, proc in procs.items()}
        finally:  # the other side, when one failed (or failed to start)
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()


def _pair(kind: str, mode: str, order: Sequence[str], runs: int, address: str) -> Iterator[Tuple[str, Dict[str, float]]]:
    """The flows of one pair, each side's sample as soon as its flow has ended."""
    if mode == "duet":
        yield from _duet(kind, runs, address).items()
        return
    for side in order:
        yield side, (one_flow if mode == "alternate" else _fresh_flow)(kind, side, runs, address)


@contextlib.contextmanager
def cluster(kind: str, ray_workers: str = "kept") -> Iterator[str]:
    """The Dask cluster, or the Ray head (``ray_workers``: ``kept``, a driver's idle worker
    processes live as long as it does; ``killed``, Ray's default: those above one per CPU
    are killed after 1 s idle, and started again when a worker blocks in ``ray.get``)."""
    if kind == "ray":
        with services.ray_head(num_cpus=2, pythonpath=str(HERE), keep_idle_workers=ray_workers == "kept") as address:
            yield address
    else:
        with services.dask_cluster(n_workers=1, threads_per_worker=2) as address:
            yield address


def measure(kind: str, runs: int, pairs: int, mode: str, address: str) -> Dict[str, List[Dict[str, float]]]:
    """``pairs`` stock/patched pairs, the order swapped every pair; the samples of each side.

    First, unmeasured, one flow of ``runs // 2`` runs on the new cluster and server: the
    first large flow they serve runs long (2026-12-02, Ray, 2,000 runs: 271 s against
    209-216 s for the next three, benchmarks/lab/flow_threads/FINDINGS.md), and without this
    the side that goes first in the first pair would carry it."""
    samples: Dict[str, List[Dict[str, float]]] = {side: [] for side in SIDES}
    if mode == "alternate":
        for side in SIDES:
            one_flow(kind, side, WARM_UP_RUNS, address)
    if runs // 2 > WARM_UP_RUNS:
        warm = (one_flow if mode == "alternate" else _fresh_flow)(kind, "stock", runs // 2, address)
        print(f"  {kind} {mode} warm-up flow of {runs // 2} runs (not counted): wall {warm['wall']:.1f} s",
              file=sys.stderr, flush=True)
    for pair in range(pairs):
        for side, sample in _pair(kind, mode, SIDES if pair % 2 == 0 else SIDES[::-1], runs, address):
            samples[side].append(sample)
            print(f"  {kind} {mode} pair {pair + 1}/{pairs} {side}: " + json.dumps({k: round(v, 2) for k, v in sample.items()}),
                  file=sys.stderr, flush=True)
    return samples


def pair_ratios(samples: Dict[str, List[Dict[str, float]]], key: str) -> List[float]:
    """Patched / stock of each pair (the n-th flow of each side)."""
    return [p[key] / s[key] for s, p in zip(samples["stock"], samples["patched"])]


def _spread(samples: Dict[str, List[Dict[str, float]]], key: str) -> str:
    ratios = pair_ratios(samples, key)
    if len(ratios) < 2:
        return f"pair ratio {ratios[0]:.3f}"
    return (f"pair ratios {min(ratios):.3f}–{max(ratios):.3f} (median {statistics.median(ratios):.3f}, "
            f"stdev {statistics.stdev(ratios):.3f})")


def rows(kind: str, runs: int, pairs: int, mode: str = "fresh", address: str = ""):
    """The rows of ``benchmarks/run.py``'s table (call inside ``services.prefect_server()``), and
    the samples behind them (for ``--json``)."""
    with contextlib.ExitStack() as stack:
        address = address or stack.enter_context(cluster(kind, RAY_WORKERS[0]))
        samples = measure(kind, runs, pairs, mode, address)
    how = {"alternate": "alternating in one process", "fresh": "fresh processes, alternating",
           "duet": "fresh processes, both sides at once"}[mode]
    name = NAMES[kind] + (f", idle workers {RAY_WORKERS[0]}" if kind == "ray" else "")
    loads = [s["load_start"] for side in SIDES for s in samples[side]] + [s["load_end"] for side in SIDES for s in samples[side]]
    out, ratios = [], {}
    for key, what in (("wall", "wall"), ("cpu", "driver CPU, all threads")):
        stock = statistics.median(s[key] for s in samples["stock"])
        patched = statistics.median(s[key] for s in samples["patched"])
        ratio = ratios[key] = patched / stock
        out.append((
            f"flow of {runs:,} task runs ({runs // 2:,} seed pairs, parents dropped) on {name}, {what} "
            f"(median of {pairs} per side, {how}; {_spread(samples, key)}; load average {min(loads):.1f}–{max(loads):.1f}; "
            f"{services.database()})",
            f"{stock:.1f} s", f"{patched:.1f} s", f"{ratio:.3f}", f"≤ {GOAL}", ratio <= GOAL,
        ))
    # the flow's own thread, for the record (not a row): where a driver-CPU difference is
    ratios["main_cpu"] = (statistics.median(s["main_cpu"] for s in samples["patched"])
                          / statistics.median(s["main_cpu"] for s in samples["stock"]))
    print(f"  {kind}: the flow thread's CPU, median patched / stock {ratios['main_cpu']:.3f} "
          f"({_spread(samples, 'main_cpu')})", file=sys.stderr, flush=True)
    if kind == "ray":
        spent = [s.get("watcher_cpu", 0.0) for s in samples["patched"]]
        extra = [p["cpu"] - s["cpu"] for s, p in zip(samples["stock"], samples["patched"])]
        rounds = [s.get("watcher_rounds", 0) for s in samples["patched"]]
        print(f"  {kind}: the watcher thread's CPU per patched flow {', '.join(f'{x:.2f}' for x in spent)} s "
              f"in {', '.join(map(str, rounds))} rounds; "
              f"patched minus stock driver CPU per pair {', '.join(f'{x:+.2f}' for x in extra)} s",
              file=sys.stderr, flush=True)
    warnings = {side: sum(s["warnings"] for s in samples[side]) for side in SIDES}
    print(f"  {kind}: 'garbage collected' warnings stock {warnings['stock']}, patched {warnings['patched']}",
          file=sys.stderr, flush=True)
    return out, dict(runner=kind, runs=runs, pairs=pairs, mode=mode, samples=samples, ratios=ratios)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 runs a flow, one pair per runner")
    parser.add_argument("--runner", choices=("dask", "ray", "both"), default="both")
    parser.add_argument("--runs", type=int, help="task runs per flow (default 2,000; --quick 100)")
    parser.add_argument("--pairs", type=int, help="stock/patched pairs per runner (default 4: each side first in "
                                                  "two; --quick 1)")
    parser.add_argument("--mode", choices=("alternate", "fresh", "duet", "both"), default="fresh",
                        help="both: alternate and fresh; duet: a pair's two flows run at the same time")
    parser.add_argument("--ray-workers", choices=("kept", "killed"), default="kept",
                        help="Ray's idle worker processes: kept for the driver's life (default), or killed after "
                             "1 s idle as Ray does by default (a flow's length then follows how many workers "
                             "Ray starts, 58-88 per 1,000 runs, on either side: benchmarks/lab/flow_threads/FINDINGS.md)")
    parser.add_argument("--json", help="where the samples are written (default: benchmarks/flow_scale.json for the "
                                       "full size on both runners, else the temp dir); scale.py draws them")
    args = parser.parse_args(argv)
    RAY_WORKERS[0] = args.ray_workers
    runs = args.runs or (100 if args.quick else FULL_RUNS)
    args.pairs = args.pairs or (1 if args.quick else 4)
    # Only the full size on both runners is the verdict the committed picture shows.
    full = runs == FULL_RUNS and args.runner == "both"
    args.json = args.json or str(HERE / "flow_scale.json" if full else Path(tempfile.gettempdir()) / "pfa-flow-scale.json")
    kinds = ("dask", "ray") if args.runner == "both" else (args.runner,)
    modes = ("alternate", "fresh") if args.mode == "both" else (args.mode,)
    from importlib.metadata import version

    releases = ", ".join(f"{d} {version(d)}" for d in ("prefect", "prefect-dask", "prefect-ray", "ray", "distributed"))
    started, load = time.monotonic(), os.getloadavg()[0]
    table, records = [], []
    database = services.database()
    command = " ".join((["PFA_PREFECT_DB=postgres"] if database == "postgres" else []) + ["python benchmarks/flow_scale.py"]
                       + list(argv if argv is not None else sys.argv[1:]))
    with services.prefect_server():
        for kind in kinds:
            with cluster(kind, args.ray_workers) as address:
                for mode in modes:
                    out, record = rows(kind, runs, pairs=args.pairs, mode=mode, address=address)
                    if kind == "ray":
                        record["ray_workers"] = args.ray_workers
                    table += out
                    records.append(record)
                    print(f"[{time.monotonic() - started:6.0f} s] {table[-2:]}", file=sys.stderr, flush=True)
    print()
    print(f"{command}: "
          f"{time.monotonic() - started:.0f} s, load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
          f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}; {releases}; Prefect server on {database}")
    for record in records:
        record["command"] = command  # each row names its run, also once rows of two runs are merged
    Path(args.json).write_text(json.dumps(dict(
        command=command, releases=releases, database=database, goal=GOAL, rows=records), indent=1))
    print(f"samples: {args.json}")
    print()
    print("| benchmark | stock | patched | ratio | goal | met? |")
    print("|---|---|---|---|---|---|")
    for name, stock, patched, ratio, goal, met in table:
        print(f"| {name} | {stock} | {patched} | {ratio} | {goal} | {'yes' if met else 'no'} |")
    return 0


if __name__ == "__main__":
    import flow_scale  # as an importable module: the tasks travel to the workers by reference

    if sys.argv[1:2] == ["--side"]:
        kind, side, runs, address = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        flow_scale.one_flow(kind, side, WARM_UP_RUNS, address)
        flow_scale._meet(side)
        print(json.dumps(flow_scale.one_flow(kind, side, runs, address)))
    else:
        sys.exit(flow_scale.main())
