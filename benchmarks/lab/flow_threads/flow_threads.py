"""Where a Ray seed flow's driver CPU goes, per Python thread, stock vs patched.

    .nox/matrix-3-9-1/bin/python benchmarks/lab/flow_threads/flow_threads.py 1000 patched stock

Starts a Prefect server and a local Ray head (benchmarks/services.py), then runs
one flow of ``runs`` task runs (the seed's pattern, benchmarks/flow_scale.py, its
phases timed: submit loop, wait, results, the runner's exit) per side named, each in a fresh interpreter after a 20-run warm-up flow.  Prints, per
side, the flow's wall and process CPU, the whole machine's CPU over the flow (every
process: Ray's raylet and workers, the Prefect server, its database), the CPU of every Python thread that ran
during the flow (summed by thread name, ended threads included: the watcher's
thread ends at the runner's exit), and for the patched side the watcher's own
figures: rounds, refs listed, CPU inside ``Watcher._ready`` (lock, check and
``ray.wait``) and inside the release callbacks.

The Ray head kills idle workers as Ray does by default; with
``PFA_FLOW_THREADS_RAY_WORKERS=kept`` it keeps them, as ``flow_scale.py`` does by default.
To measure another version of the package, put its tree first on ``PYTHONPATH``.

With ``PFA_PYSPY_DIR=dir`` each flow's process is sampled from outside by py-spy
(20 Hz, every thread, never paused) into ``dir/<side>-<n>.txt`` (collapsed
stacks); ``profile_diff.py`` compares the sides by function.
"""

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "benchmarks"))

import services  # noqa: E402  (the environment before prefect is imported)
import flow_scale  # noqa: E402

PY = collections.defaultdict(float)
_run = threading.Thread.run


def _timed_run(self):
    started = time.thread_time()
    try:
        _run(self)
    finally:
        PY[re.sub(r"[-_]?\d+", "", self.name)] += time.thread_time() - started


threading.Thread.run = _timed_run


def instrument() -> None:
    import prefect_future_anchor.ray_watch as rw

    ready, take = rw.Watcher._ready, rw.Watcher._take

    def _ready(self, refs):
        started = time.thread_time()
        try:
            return ready(self, refs)
        finally:
            PY["watcher: in _ready"] += time.thread_time() - started
            PY["watcher: rounds"] += 1
            PY["watcher: refs listed"] += len(refs)

    def timed(callback):
        def call():
            started = time.thread_time()
            try:
                callback()
            finally:
                PY["watcher: in callbacks"] += time.thread_time() - started
                PY["watcher: callbacks"] += 1

        return call

    def _take(self, ref):
        return [(timed(on_ready), on_lost) for on_ready, on_lost in take(self, ref)]

    rw.Watcher._ready, rw.Watcher._take = _ready, _take


PHASES: dict = {}


def timed_seed_pairs(pairs: int) -> int:
    """``flow_scale.seed_pairs`` with its phases timed: the submit loop, the wait, the results."""
    from prefect.futures import wait

    task1, task2 = flow_scale._seed_tasks()
    PHASES["body start"] = time.perf_counter()
    children = [task2.submit(task1.submit()) for _ in range(pairs)]
    PHASES["submitted"] = time.perf_counter()
    wait(children)
    PHASES["waited"] = time.perf_counter()
    total = sum(child.result() for child in children)
    PHASES["body end"] = time.perf_counter()
    return total


def machine_busy() -> float:
    """Seconds of CPU every process of the machine has used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _group(pid: int, cmdline: str) -> str:
    if pid == os.getpid():
        return "this driver"
    for word, name in (("raylet", "raylet"), ("gcs_server", "gcs_server"), ("default_worker", "ray workers"),
                       ("ray::", "ray workers"), ("postgres", "postgres"), ("uvicorn", "prefect server"),
                       ("prefect", "prefect server"), ("dashboard", "ray dashboard/agents"),
                       ("ray/_private", "ray other"), ("ray/autoscaler", "ray other")):
        if word in cmdline:
            return name
    return "other"


def processes() -> dict:
    """CPU seconds of every process now (its own plus its reaped children's), by pid, with its group."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        cpu = sum(int(v) for v in fields[11:15]) / tick  # utime stime cutime cstime
        out[int(entry)] = (_group(int(entry), cmdline), cpu)
    return out


def by_group(before: dict, after: dict) -> dict:
    groups: dict = collections.defaultdict(float)
    for pid, (group, cpu) in after.items():
        start = before.get(pid, (group, 0.0))[1]
        groups[group] += cpu - start
    return {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])}


#: Patched sides with one part of the shim switched off (after install(), in this process).
ABLATIONS = {
    # no crash reader: a completion only releases the run
    "patched-no-final-states": lambda rr: setattr(rr.runtime, "final_states", False),
    # no watcher, nothing held: each run is released as soon as it is submitted
    "patched-release-at-once": lambda rr: setattr(type(rr.runtime), "when_done", lambda self, raw, done, lost: done()),
    # no watcher, everything held: each run is released at the runner's exit, before the drain
    "patched-hold-till-exit": lambda rr: _hold_till_exit(rr),
}


def _hold_till_exit(rr) -> None:
    held = []
    draining = type(rr.runtime).draining

    def when_done(self, raw, done, lost):
        held.append(done)

    def release_all(self):
        while held:
            held.pop()()
        return draining(self)

    type(rr.runtime).when_done, type(rr.runtime).draining = when_done, release_all


def _switch(kind: str, side: str) -> None:
    import prefect_future_anchor
    import prefect_future_anchor.ray_runner as rr

    prefect_future_anchor.install()
    ABLATIONS[side](rr)


def one(side: str, runs: int, address: str) -> None:
    flow_scale.seed_pairs = timed_seed_pairs
    if side.startswith("patched"):
        instrument()
    if side in ABLATIONS:
        flow_scale._switch = _switch
    flow_scale.one_flow("ray", side, 20, address)
    PY.clear()
    main, busy, before = time.thread_time(), machine_busy(), processes()
    result = flow_scale.one_flow("ray", side, runs, address)
    busy, groups = machine_busy() - busy, by_group(before, processes())
    PY["MainThread"] = time.thread_time() - main
    ended = time.perf_counter()
    marks = ["body start", "submitted", "waited", "body end"]
    phases = {f"{a} -> {b}": round(PHASES[b] - PHASES[a], 2) for a, b in zip(marks, marks[1:])}
    phases["body end -> flow returned"] = round(ended - PHASES["body end"], 2)
    print(json.dumps({"flow": result, "machine CPU": round(busy, 1), "by process": groups, "phases": phases,
                      "threads": {k: round(v, 2) for k, v in sorted(PY.items(), key=lambda kv: -kv[1])}}))


def worker_logs(address: str) -> set:
    """The worker processes the head at ``address`` has started so far (one log file each)."""
    port = address.rsplit(":", 1)[1]
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a.endswith("raylet") for a in argv[:1]) and any(a.endswith(f":{port}") for a in argv):
            session = next(a.split("=", 1)[1] for a in argv if a.startswith("--session_dir="))
            logs = Path(session) / "logs"  # Ray moves the logs of ended workers to logs/old
            return {n for d in (logs, logs / "old") if d.is_dir() for n in os.listdir(d)
                    if n.startswith("worker-") and n.endswith(".out")}
    return set()


def main() -> None:
    runs, sides = int(sys.argv[1]), sys.argv[2:]
    workers = os.environ.get("PFA_FLOW_THREADS_RAY_WORKERS", "killed")
    with services.prefect_server(), flow_scale.cluster("ray", workers) as address:
        for side in sides:
            before = worker_logs(address)
            command = [sys.executable, __file__, "--one", side, str(runs), address]
            if os.environ.get("PFA_PYSPY_DIR"):  # sampled from outside, never paused (--nonblocking)
                profiles = Path(os.environ["PFA_PYSPY_DIR"])
                profiles.mkdir(parents=True, exist_ok=True)
                count = sum(1 for _ in profiles.glob(f"{side}-*.txt"))
                command = [str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "-r", "20",
                           "-t", "--nolineno", "-f", "raw", "-o", str(profiles / f"{side}-{count + 1}.txt"),
                           "--"] + command
            out = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
            started = len(worker_logs(address) - before)
            print(side, f"ray worker processes started: {started};",
                  next((line for line in reversed(out.stdout.splitlines()) if line.startswith("{")), None)
                  or out.stderr[-3000:], flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        one(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
