"""Scale: what learning of completions costs the driver as runs pending / completing grow.

Real Prefect runs are too slow to reach 10^4-10^5 here, so the mechanisms are
driven directly:

- **Ray**: refs whose completion this benchmark controls: calls of an async
  actor (``Gate.hold``), each waiting on its own event, opened by the actor
  itself in a given order at a set rate.  The watcher (``ray_watch.Watcher``,
  and the previous design loaded from git, ``OLD_COMMIT``) is handed every ref.
  Figures: the watcher thread's CPU over the span (its own thread clock), the
  whole driver's CPU minus the same workload with no watcher, the release delay
  (gate opened -> ``on_ready``), callbacks fired.  Idle: N refs pending, none
  completing, then a few refs far from the oldest/newest opened at once to
  measure the out-of-order release against the bound in ``ray_watch``.
- **Dask**: ``client.map`` of N futures on a scheduler and two workers in
  processes of their own (so the driver process is the client alone), with no
  callback (stock), with the shim's registration (``DaskRuntime.when_done``,
  batched on the client's loop) and with its previous design (one
  ``add_done_callback`` per future), alternating; the extra CPU of the driver
  process per future.

    python benchmarks/scale.py            # full sizes (about 35 minutes here)
    python benchmarks/scale.py --quick    # at most 3 minutes
    python benchmarks/scale.py --quick --only ray --no-plot
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import services  # noqa: E402,F401  (the environment before Ray / Dask start)
import flow_scale  # noqa: E402  (pair_ratios, for the flows panel)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

#: The commit whose ``ray_runner.Watcher`` is the design this one replaces.
OLD_COMMIT = "2e3acdc"
RATE = 200.0  # completions per second

SIZES = {
    "quick": dict(order=[1000, 4000], old_order=[1000], shuffled=[2000], idle=[1000, 10000], old_idle=[1000, 10000],
                  idle_seconds=5, dask=[1000, 10000], dask_rounds={1000: 1, 10000: 1}),
    "full": dict(order=[1000, 10000, 20000], old_order=[1000, 10000], shuffled=[10000], idle=[1000, 10000, 100000],
                 old_idle=[1000, 10000, 100000], idle_seconds=20, dask=[1000, 10000, 100000], dask_rounds={1000: 5, 10000: 3, 100000: 1}),
}


def _thread_cpu(thread: Optional[threading.Thread]) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident)) if thread and thread.ident else 0.0


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


# -- the two watchers ----------------------------------------------------------------------


def old_watcher_class() -> type:
    """The previous design (one ``ray.wait(all pending, num_returns=1)`` per round),
    compiled from git rather than copied, behind the new ``watch`` signature."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:prefect_future_anchor/ray_runner.py"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    tree = ast.parse(source)
    keep = [n for n in tree.body if (isinstance(n, ast.ClassDef) and n.name == "Watcher")
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "POLL_SECONDS" for t in n.targets))
            or (isinstance(n, ast.FunctionDef) and n.name == "_ray")
            or isinstance(n, (ast.Import, ast.ImportFrom)) and not getattr(n, "level", 0) and "wrapt" not in ast.dump(n)]
    from prefect_future_anchor import guard

    namespace: Dict[str, Any] = {"guard": guard, "__name__": "old_ray_runner"}
    exec(compile(ast.Module(body=keep, type_ignores=[]), f"{OLD_COMMIT}:ray_runner.py", "exec"), namespace)
    old = namespace["Watcher"]

    class OldWatcher(old):
        def watch(self, ref, on_ready, on_lost=None):
            super().watch(ref, on_ready)

    return OldWatcher


def new_watcher_class() -> type:
    from prefect_future_anchor.ray_watch import Watcher

    return Watcher


# -- Ray -----------------------------------------------------------------------------------


#: Every service of the head on a port of its own: other engineers' and CI's Ray
#: instances run beside this one, and under load a head whose agents pick ports
#: (and report them through files) now and then never registers its raylet.
RAY_PORTS = ("node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-port",
             "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")


@contextlib.contextmanager
def local_ray() -> Iterator[Any]:
    """A head of this benchmark's own (``ray start --head --block``, its own temp dir
    and process group, one CPU), and this process as its driver."""
    import ray

    from prefect_future_anchor.server import free_port, stop_group

    temp_dir = tempfile.mkdtemp(prefix="pfa-ray-")
    port = free_port()
    log = Path(temp_dir) / "head.log"
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
         f"--temp-dir={temp_dir}", *(f"--{name}={free_port()}" for name in RAY_PORTS)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        # the raylet gives up on agents slower than this to write their port files (load 10+ here)
        env=dict(os.environ, RAY_agent_register_timeout_ms="600000", RAY_worker_niceness="0"),
    )
    try:
        _poll(lambda: head.poll() is not None or b"Ray runtime started" in log.read_bytes(), 300, "ray head")
        if head.poll() is not None:
            failed = [line for path in Path(temp_dir).glob("session_*/logs/raylet.out")
                      for line in path.read_text(errors="replace").splitlines() if "Check failed" in line]
            raise RuntimeError(f"ray head exited: {log.read_text()[-1500:]}\n{failed}")
        ray.init(address=f"127.0.0.1:{port}", _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
    finally:
        stop_group(head, 60, kill_timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def make_gate(ray: Any, capacity: int) -> Any:
    @ray.remote(num_cpus=0, max_concurrency=capacity)
    class Gate:
        """Calls of ``hold(i)`` finish when ``open`` reaches ``i``."""

        def __init__(self) -> None:
            self.events: Dict[int, asyncio.Event] = {}
            self.started = 0
            self.opened: Dict[int, float] = {}

        def _event(self, i: int) -> asyncio.Event:
            event = self.events.get(i)
            if event is None:
                event = self.events[i] = asyncio.Event()
            return event

        async def hold(self, i: int) -> None:
            self.started += 1
            await self._event(i).wait()
            self.events.pop(i, None)

        async def count(self) -> int:
            return self.started

        async def open(self, order: List[int], rate: float) -> None:
            start = time.monotonic()
            for k, i in enumerate(order):
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.opened[i] = time.monotonic()  # CLOCK_MONOTONIC: one clock for the whole machine
                self._event(i).set()

        async def times(self) -> Dict[int, float]:
            opened, self.opened = self.opened, {}
            return opened

    return Gate.remote()


class Fired:
    """``on_ready`` / ``on_lost`` of each ref, stamped."""

    def __init__(self, n: int) -> None:
        self.ready: List[Optional[float]] = [None] * n
        self.lost = 0
        self.twice = 0
        self.count = 0
        self._lock = threading.Lock()

    def on_ready(self, i: int) -> Callable[[], None]:
        def fire() -> None:
            now = time.monotonic()
            with self._lock:
                if self.ready[i] is not None:
                    self.twice += 1
                self.ready[i] = now
                self.count += 1

        return fire

    def on_lost(self) -> None:
        with self._lock:
            self.lost += 1


def _percentile(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))] if values else float("nan")


def ray_completing(ray: Any, n: int, design: Optional[type], shuffled: bool) -> Dict[str, Any]:
    """``n`` refs opened at ``RATE`` (in submission order, or shuffled) with ``design``
    watching them (None: nobody watches; the driver's own baseline)."""
    gate = make_gate(ray, n + 10)
    refs = [gate.hold.remote(i) for i in range(n)]
    _poll(lambda: ray.get(gate.count.remote()) >= n, 600, "gate holds started")
    order = list(range(n))
    if shuffled:
        random.Random(n).shuffle(order)
    fired = Fired(n)
    watcher = design() if design else None
    if watcher:
        for i, ref in enumerate(refs):
            watcher.watch(ref, fired.on_ready(i), fired.on_lost)
        _poll(lambda: watcher._thread is not None, 30, "watcher thread")
    thread = watcher._thread if watcher else None
    cpu0, process0, wall0 = _thread_cpu(thread), time.process_time(), time.monotonic()
    rounds0 = watcher.rounds if watcher and hasattr(watcher, "rounds") else 0
    opening = gate.open.remote(order, RATE)
    if watcher:
        _poll(lambda: fired.count + fired.lost >= n, n / RATE * 4 + 120, "every callback")
    else:
        ray.wait([refs[order[-1]]], num_returns=1, timeout=n / RATE * 4 + 120, fetch_local=False)
    span = time.monotonic() - wall0
    cpu, process = _thread_cpu(thread) - cpu0, time.process_time() - process0
    rounds = (watcher.rounds - rounds0) if watcher and hasattr(watcher, "rounds") else 0
    ray.get(opening)
    opened = ray.get(gate.times.remote())
    if watcher:
        watcher.pause()
    delays = [fired.ready[i] - opened[i] for i in range(n) if fired.ready[i] is not None]
    ray.kill(gate)
    del refs
    return dict(n=n, span=span, thread=cpu / span, process=process / span, rounds=rounds, bound=_bound(n),
                fired=fired.count, lost=fired.lost, twice=fired.twice,
                p50=_percentile(delays, 0.5), p95=_percentile(delays, 0.95), max=max(delays, default=float("nan")))


def _bound(pending: int) -> float:
    from prefect_future_anchor import ray_watch

    return max(ray_watch.BOUND_FLOOR, pending * ray_watch.BOUND_PER_PENDING)


def ray_idle(ray: Any, n: int, design: Optional[type], seconds: float, probes: int = 3) -> Dict[str, Any]:
    """``n`` refs pending, none completing, for ``seconds``; then ``probes`` refs
    from the middle opened at once: how long until each is released."""
    gate = make_gate(ray, n + 10)
    refs = [gate.hold.remote(i) for i in range(n)]
    _poll(lambda: ray.get(gate.count.remote()) >= n, 900, "gate holds started")
    fired = Fired(n)
    watcher = design() if design else None
    if watcher:
        for i, ref in enumerate(refs):
            watcher.watch(ref, fired.on_ready(i), fired.on_lost)
        _poll(lambda: watcher._thread is not None, 30, "watcher thread")
    thread = watcher._thread if watcher else None
    time.sleep(min(2.0, seconds / 4))  # settle: the first rounds after the last watch
    cpu0, process0, wall0 = _thread_cpu(thread), time.process_time(), time.monotonic()
    time.sleep(seconds)  # the measured interval, not a synchronisation
    span = time.monotonic() - wall0
    cpu, process = _thread_cpu(thread) - cpu0, time.process_time() - process0
    out = dict(n=n, span=span, thread=cpu / span, process=process / span)
    if watcher:
        middle = random.Random(n).sample(range(n // 4, 3 * n // 4), probes)
        ray.get(gate.open.remote(middle, 1e6))
        opened = ray.get(gate.times.remote())
        _poll(lambda: all(fired.ready[i] is not None for i in middle), 60 + n * 1e-3, "the middle refs released")
        delays = [fired.ready[i] - opened[i] for i in middle]
        out.update(out_of_order_max=max(delays), bound=_bound(n - probes))
        watcher.pause()
    ray.kill(gate)
    del refs
    return out


def ray_rows(sizes: dict) -> Dict[str, List[Dict[str, Any]]]:
    new, old = new_watcher_class(), old_watcher_class()
    results: Dict[str, List[Dict[str, Any]]] = {k: [] for k in ("order", "order_old", "shuffled", "idle", "idle_old")}
    with local_ray() as ray:
        for n in sizes["order"]:
            base = ray_completing(ray, n, None, False)
            row = ray_completing(ray, n, new, False)
            row["extra_process"] = row["process"] - base["process"]
            results["order"].append(row)
            if n in sizes["old_order"]:
                row = ray_completing(ray, n, old, False)
                row["extra_process"] = row["process"] - base["process"]
                results["order_old"].append(row)
            _report(results)
        for n in sizes["shuffled"]:
            results["shuffled"].append(ray_completing(ray, n, new, True))
        for n in sizes["idle"]:
            base = ray_idle(ray, n, None, sizes["idle_seconds"])
            for design, key, wanted in ((new, "idle", True), (old, "idle_old", n in sizes["old_idle"])):
                if wanted:
                    row = ray_idle(ray, n, design, sizes["idle_seconds"])
                    row["extra_process"] = row["process"] - base["process"]
                    results[key].append(row)
            _report(results)
    return results


def _report(results: Dict[str, Any]) -> None:
    sys.stderr.write(f"... {sum(len(v) for v in results.values())} rows measured\n")


# -- Dask ----------------------------------------------------------------------------------


@contextlib.contextmanager
def dask_processes(workers: int = 2) -> Iterator[str]:
    """A ``dask scheduler`` and ``dask worker`` processes, each in a process group of
    its own, stopped by handle."""
    from prefect_future_anchor.server import free_port, stop_group

    bin_dir = Path(sys.executable).parent
    address = f"tcp://127.0.0.1:{free_port()}"
    logs = Path(tempfile.mkdtemp(prefix="pfa-scale-dask-"))
    procs: List[subprocess.Popen] = []

    def start(name: str, argv: List[str]) -> None:
        procs.append(subprocess.Popen(argv, stdout=(logs / f"{name}.log").open("wb"), stderr=subprocess.STDOUT,
                                      start_new_session=True))

    try:
        start("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1",
                            "--port", address.rsplit(":", 1)[1], "--no-dashboard"])
        for k in range(workers):
            start(f"worker{k}", [str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1",
                                 "--nworkers", "1", "--nthreads", "1", "--no-dashboard"])
        yield address
    finally:
        for proc in reversed(procs):
            stop_group(proc)
        shutil.rmtree(logs, ignore_errors=True)


#: The Dask sides: no callback (stock), the shim's completion registration
#: (``DaskRuntime.when_done``, batched on the client's loop), and its previous
#: design (``dask_runner.BATCHED = False``: one ``add_done_callback`` per future).
DASK_SIDES = ("stock", "batched", "per-future")


def dask_once(client: Any, n: int, start: int, side: str) -> Dict[str, float]:
    from distributed import wait

    from prefect_future_anchor import dask_runner

    fired = [0]
    lock = threading.Lock()

    def done() -> None:
        with lock:
            fired[0] += 1

    runtime, batched = dask_runner.DaskRuntime(), dask_runner.BATCHED
    dask_runner.BATCHED = side == "batched"
    try:
        process0, wall0 = time.process_time(), time.monotonic()
        futures = client.map(abs, range(start, start + n), pure=False)
        if side != "stock":
            for future in futures:
                runtime.when_done(future, done, done)
        wait(futures)
        if side != "stock":
            _poll(lambda: fired[0] >= n, 120, "every done callback")
        span, process = time.monotonic() - wall0, time.process_time() - process0
    finally:
        dask_runner.BATCHED = batched
    del futures
    with contextlib.suppress(TimeoutError):  # best effort: the next run starts on an emptier scheduler
        _poll(lambda: client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) < 10, 60,
              "the scheduler forgets the runs")
    return dict(span=span, process=process, fired=fired[0])


def dask_rows(sizes: dict) -> List[Dict[str, Any]]:
    from distributed import Client

    rows = []
    with dask_processes() as address, Client(address, timeout=120) as client:
        client.wait_for_workers(2, timeout=180)
        dask_once(client, 1000, 0, "stock")  # warm-up
        start = 10**7
        for n in sizes["dask"]:
            runs: Dict[str, List[Dict[str, float]]] = {side: [] for side in DASK_SIDES}
            for k in range(sizes["dask_rounds"][n]):
                for side in (DASK_SIDES[k % 3:] + DASK_SIDES[:k % 3]):  # each side first in turn
                    runs[side].append(dask_once(client, n, start, side))
                    start += n
            stock = _percentile([r["process"] for r in runs["stock"]], 0.5)
            row = dict(n=n, stock=stock, rounds=sizes["dask_rounds"][n])
            for side in DASK_SIDES[1:]:
                cpu = _percentile([r["process"] for r in runs[side]], 0.5)
                span = _percentile([r["span"] for r in runs[side]], 0.5)
                row[side] = dict(cpu=cpu, span=span, per_future=(cpu - stock) / n, extra=(cpu - stock) / span,
                                 fired=min(r["fired"] for r in runs[side]))
            rows.append(row)
            sys.stderr.write(f"... Dask {n:,} measured\n")
    return rows


# -- report --------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{x * 100:.2f}%"


def table(ray_results: Optional[dict], dask_results: Optional[list]) -> str:
    lines = []
    if ray_results:
        lines += [
            f"| Ray watcher | N | span | watcher thread CPU (% of a core) | driver CPU minus no watcher | probes | "
            f"release delay p50 / p95 / max | callbacks fired |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for key, label in (("order", f"new, in order at {RATE:g}/s"), ("order_old", f"old ({OLD_COMMIT}), in order at {RATE:g}/s"),
                           ("shuffled", f"new, random order at {RATE:g}/s")):
            for r in ray_results[key]:
                bound = f" (bound {r['bound'] * 1e3:.0f} ms)" if key == "shuffled" and "bound" in r else ""
                lines.append(
                    f"| {label} | {r['n']:,} | {r['span']:.1f} s | {_pct(r['thread'])} | "
                    f"{_pct(r['extra_process']) if 'extra_process' in r else '–'} | {r['rounds']:,} | "
                    f"{r['p50'] * 1e3:.0f} / {r['p95'] * 1e3:.0f} / {r['max'] * 1e3:.0f} ms{bound} | "
                    f"{r['fired']:,} of {r['n']:,} (lost {r['lost']}, twice {r['twice']}) |"
                )
        for key, label in (("idle", "new, pending, none completing"), ("idle_old", f"old ({OLD_COMMIT}), pending, none completing")):
            for r in ray_results[key]:
                ooo = (f"out of order: {r['out_of_order_max'] * 1e3:.0f} ms (bound {r['bound'] * 1e3:.0f} ms)"
                       if "out_of_order_max" in r else "")
                lines.append(f"| {label} | {r['n']:,} | {r['span']:.1f} s | {_pct(r['thread'])} | "
                             f"{_pct(r['extra_process'])} | – | {ooo} | – |")
    if dask_results:
        lines += [
            "",
            "| Dask, the shim's completion registration | N | span | driver CPU stock / with it | "
            "extra per future | extra (% of a core) | callbacks fired |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in dask_results:
            runs = f"median of {r['rounds']}" if r["rounds"] > 1 else "one run each"
            for side, label in (("batched", "batched on the loop (this design)"),
                                ("per-future", "one add_done_callback per future (previous)")):
                x = r[side]
                lines.append(f"| {label}, {runs} | {r['n']:,} | {x['span']:.1f} s | "
                             f"{r['stock']:.2f} s / {x['cpu']:.2f} s | {x['per_future'] * 1e6:.1f} µs | "
                             f"{_pct(x['extra'])} | {x['fired']:,} |")
    return "\n".join(lines)


def _flows_panel(ax: Any, flows: dict) -> None:
    """``flow_scale.py``'s rows: patched / stock per runner, wall and driver CPU, each pair's ratio a dot."""
    names = {"dask": "Dask", "ray": "Ray"}
    rows = flows["rows"]
    width = 0.38
    shown = []  # every ratio drawn, for the axis
    for i, (key, label) in enumerate((("wall", "wall"), ("cpu", "driver CPU (all threads)"))):
        xs = [j + (i - 0.5) * width for j in range(len(rows))]
        ax.bar(xs, [r["ratios"][key] for r in rows], width, label=f"{label}: median patched / median stock")
        for x, r in zip(xs, rows):
            pairs = flow_scale.pair_ratios(r["samples"], key)
            shown += [r["ratios"][key], *pairs]
            ax.plot([x] * len(pairs), pairs, "k.", markersize=4)
            ax.annotate(f"{r['ratios'][key]:.3f}", (x, r["ratios"][key]), ha="center", va="bottom", fontsize=8)
    ax.axhline(flows["goal"], color="red", linestyle="--", linewidth=1, label=f"goal ≤ {flows['goal']}")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{names[r['runner']]}\n{r['runs']:,} runs, {r['pairs']} pairs ({r['mode']})" for r in rows],
                       fontsize=8)
    ax.set_ylim(min(0.9, min(shown) - 0.02), max(1.1, max(shown) + 0.15))  # room for the legend
    ax.set_ylabel("patched / stock (dots: each pair)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    commands = sorted({r.get("command", flows["command"]) for r in rows})
    head = f"Seed flows at size, patched / stock ({flows['database']} server; {flows['releases']})"
    ax.set_title("\n".join(textwrap.wrap(head, 80) + [line for c in commands for line in textwrap.wrap(f"$ {c}", 80)]),
                 fontsize=7)


def plot(ray_results: Optional[dict], dask_results: Optional[list], command: Any, path: Path,
         versions: Optional[Dict[str, str]] = None, flows: Optional[dict] = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    versions = versions or _versions()
    panels = (["order", "idle"] if ray_results else []) + (["dask"] if dask_results else []) + (["flows"] if flows else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "flows":
            _flows_panel(ax, flows)
            continue
        if panel == "dask":
            xs = [r["n"] for r in dask_results]
            for side, style, label in (("batched", "o-", "batched on the loop (this design)"),
                                       ("per-future", "s:", "add_done_callback per future (previous)")):
                ax.plot(xs, [r[side]["extra"] * 100 for r in dask_results], style, label=label)
                for r in dask_results:
                    ax.annotate(f"{r[side]['per_future'] * 1e6:.1f} µs/future", (r["n"], r[side]["extra"] * 100),
                                fontsize=8)
            subject = f"Dask {versions['distributed']}: extra driver CPU, N futures completing"
        else:
            new, old = ray_results[panel], ray_results[f"{panel}_old"]
            ax.plot([r["n"] for r in new], [r["thread"] * 100 for r in new], "o-", label="new watcher (thread CPU)")
            ax.plot([r["n"] for r in new], [r.get("extra_process", 0) * 100 for r in new], "o:",
                    label="new watcher (driver minus none)")
            if old:
                ax.plot([r["n"] for r in old], [r["thread"] * 100 for r in old], "s-", label=f"old {OLD_COMMIT} (thread CPU)")
            if panel == "order":
                shuffled = ray_results["shuffled"]
                ax.plot([r["n"] for r in shuffled], [r["thread"] * 100 for r in shuffled], "^", label="new, random order")
                subject = f"Ray {versions['ray']}: N refs completing at {RATE:g}/s"
            else:
                subject = f"Ray {versions['ray']}: N refs pending, none completing"
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("N")
        ax.set_ylabel("extra driver CPU (% of a core)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        # one command for every panel, or one per part ({"ray": ..., "dask": ...}): the run that made it
        made_by = command if isinstance(command, str) else command["dask" if panel == "dask" else "ray"]
        ax.set_title(f"{subject}\n$ {made_by}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _versions() -> Dict[str, str]:
    """The releases measured: this environment's (the rows are measured in it)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("ray", "distributed")}


def _flows(path: Optional[str]) -> Optional[dict]:
    if not path:
        return None
    if not Path(path).exists():
        print(f"scale.py: no flow rows at {path} (run benchmarks/flow_scale.py first); the picture leaves them out",
              file=sys.stderr)
        return None
    return json.loads(Path(path).read_text())


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("ray", "dask"))
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--png", help="default: benchmarks/scale.png (--quick: in the temp dir)")
    parser.add_argument("--json", help="where the measured rows are written (default: beside the PNG)")
    parser.add_argument("--replot", metavar="JSON", help="draw the PNG from a run's rows, measure nothing")
    parser.add_argument("--flows", metavar="JSON", help="flow_scale.py's samples, drawn as the last panel (default: "
                                                          "benchmarks/flow_scale.json; --quick: the temp dir's)")
    args = parser.parse_args(argv)
    args.flows = args.flows or str(Path(tempfile.gettempdir()) / "pfa-flow-scale.json" if args.quick
                                   else HERE / "flow_scale.json")
    # Quick sizes are no verdict: they never overwrite the committed picture and rows.
    args.png = args.png or str(Path(tempfile.gettempdir()) / "pfa-scale-quick.png" if args.quick else HERE / "scale.png")
    args.json = args.json or str(Path(args.png).with_suffix(".json"))
    if args.replot:
        saved = json.loads(Path(args.replot).read_text())
        plot(saved["ray"], saved["dask"], saved.get("commands") or saved["command"], Path(args.png), saved.get("versions"),
             _flows(args.flows))
        print(f"plot: {args.png}")
        return 0
    if not args.no_plot:
        import matplotlib  # noqa: F401  (fail before measuring, not after)
    command = "python benchmarks/scale.py" + (" --quick" if args.quick else "") + (f" --only {args.only}" if args.only else "")
    sizes = SIZES["quick" if args.quick else "full"]
    ray_results = ray_rows(sizes) if args.only in (None, "ray") else None
    if ray_results:
        print(table(ray_results, None), file=sys.stderr, flush=True)  # kept if the Dask part fails
    dask_results = dask_rows(sizes) if args.only in (None, "dask") else None
    import platform

    print(f"`{command}` ({sys.executable}; Python {platform.python_version()})\n")
    print(table(ray_results, dask_results))
    versions = _versions()
    Path(args.json).write_text(json.dumps(dict(command=command, versions=versions, ray=ray_results, dask=dask_results),
                                          indent=1))
    if not args.no_plot:
        plot(ray_results, dask_results, command, Path(args.png), versions, _flows(args.flows))
        print(f"\nplot: {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
