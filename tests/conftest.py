"""Real parts for every test: one Prefect server, one Dask LocalCluster and one
local Ray head per test session, each started here and stopped by its handle.

Nothing here imports prefect at module level: the server's address must be in
the environment before Prefect (and the Dask/Ray workers) read their settings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

# Neither module imports prefect; test modules import these names from here.
from prefect_future_anchor.demo import GC_WARNING  # noqa: F401
from prefect_future_anchor.server import _die_with_parent, free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent

_stack = contextlib.ExitStack()
_home: "str | None" = None


def runners_available() -> list:
    """Runners this environment has (``PFA_RUNNERS``, default both)."""
    return [r for r in os.environ.get("PFA_RUNNERS", "dask,ray").split(",") if r]


def stock_warns(runner: str) -> bool:
    """Whether the stock seed flow is expected to warn here (``PFA_EXPECT_STOCK_WARNINGS``).

    The default is the project's reference environment, prefect 3.3.7 /
    prefect-dask 0.3.5 / prefect-ray 0.4.4, where both warn.  The release matrix
    sets it per row from its own table, independently of the shim's guard table.
    """
    return runner in os.environ.get("PFA_EXPECT_STOCK_WARNINGS", "dask,ray").split(",")


def finished_warns(runner: str) -> bool:
    return runner in os.environ.get("PFA_EXPECT_FINISHED_WARNINGS", "ray").split(",")


def client_races() -> bool:
    return os.environ.get("PFA_EXPECT_CLIENT_RACE", "1") == "1"


def settings_pickle() -> bool:
    """Whether this row's Prefect settings can be pickled (not on prefect 3.0.x: a lambda in a Setting)."""
    import pickle

    try:
        from prefect.context import SettingsContext

        current = SettingsContext.get()
        pickle.dumps((current.profile, current.settings))
    except Exception:
        return False
    return True


def expected_patches(versions) -> set:
    """The patches install() must apply here, from the row's own observations
    (not from the shim's table, which is what the tests check)."""
    expected = set()
    for distribution, name in (("prefect-dask", "dask"), ("prefect-ray", "ray")):
        if versions.get(distribution) is None:
            continue
        expected.add(f"{name}.track")
        expected.add(f"{name}.final-states")
        if settings_pickle():  # every release serializes the settings per submit; 3.0.x's cannot be keyed
            expected.add(f"{name}.context-once")
        if name == "dask":
            expected.add("dask.payload-once")  # every release puts the Task and context in each run's spec
        expected.add(f"{name}.plain-walk")  # every release walks the parameters with visit_collection
        if name == "ray" and stock_warns("ray"):
            expected.add("ray.ready-del")
        if name == "dask" and client_races():
            expected.add("dask.client-once")
    try:
        import prefect.task_runners

        process_pool = hasattr(prefect.task_runners, "ProcessPoolTaskRunner")
    except ImportError:
        process_pool = False
    if versions.get("prefect") is not None and process_pool:
        expected.update({"process-pool.track", "process-pool.final-states"})
    # applied once a flow has run here (its module is imported then, not by install())
    if versions.get("prefect") is not None and not versions["prefect"].startswith("2.") and "prefect.flow_engine" in sys.modules:
        expected.add("flow.drain-in-run")
    return expected


def _wait_until(check, timeout: float, what: str, proc: "subprocess.Popen | None" = None, log=None) -> None:
    """Readiness poll for a service this file started (not a test synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.25)
    detail = Path(log).read_text()[-4000:] if log and Path(log).exists() else ""
    if proc is not None and proc.poll() is not None:
        raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready\n{detail}")
    raise RuntimeError(f"{what} did not become ready within {timeout}s\n{detail}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    """Start the Prefect server before any test module imports prefect."""
    global _home
    # A session stopped with SIGTERM (CI's job control) still stops what it started:
    # the servers, clusters and Ray heads below are stopped by pytest_unconfigure.
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _interrupt)
    # Bytecode written as modules are first imported, by this process and everything it starts
    # (Ray heads and their workers, Dask workers, servers, subprocesses): with
    # PYTHONDONTWRITEBYTECODE=1 (set on the CI machine) each of them compiled prefect anew.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.dont_write_bytecode = False
    os.environ.setdefault("PREFECT_TELEMETRY_ENABLED", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
    os.environ.update(RAY_ISOLATION)
    # a local Ray on a busy 2-core machine can take longer than Ray's default to register its raylet
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    # Ray starts its workers at nice 15: beside CI's Dask-only jobs (nice 0) they got almost no
    # CPU (load 22, the Ray tests 3-4 times slower than alone).  The tests' workers run at 0.
    os.environ.setdefault("RAY_worker_niceness", "0")
    # A fresh home per session: a database migrated by another release breaks this one.
    _home = tempfile.mkdtemp(prefix="pfa-prefect-home-")
    os.environ["PREFECT_HOME"] = _home
    if os.environ.get("PFA_NO_SERVER"):
        return
    from prefect_future_anchor.server import prefect_server

    # Exports PREFECT_API_URL for the tests and the Dask/Ray workers they start.
    # A loaded 2-core machine has taken more than 120 s to start it.
    _stack.enter_context(prefect_server(startup_timeout=300, home=_home))


#: Variants the stock release itself cannot run, whatever the shim does:
#: (runner, variant) -> (distribution, first fixed release, why).
UPSTREAM_BROKEN = {
    ("dask", "wait_for"): (
        "prefect-dask",
        "0.3.2",
        "prefect-dask < 0.3.2 ships wait_for futures to the worker unconverted; there the "
        "dependent does not wait for a parent that is still running and ends NotReady "
        "('Upstream task run ... did not reach a COMPLETED state'; upstream, fixed in 0.3.2)",
    ),
}


def pytest_collection_modifyitems(config, items):
    from importlib import metadata

    from prefect_future_anchor.releases import parse_version

    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        broken = UPSTREAM_BROKEN.get((params.get("kind"), params.get("variant")))
        if broken is None:
            continue
        distribution, fixed, why = broken
        try:
            version = parse_version(metadata.version(distribution))
        except (metadata.PackageNotFoundError, ValueError):
            continue
        if version < parse_version(fixed):
            item.add_marker(pytest.mark.skip(reason=why))


def pytest_unconfigure(config):
    auto_init = sys.modules.get("ray._private.auto_init_hook")
    if auto_init is not None:
        # A stock PrefectRayFuture collected at exit (one kept alive by a failure's
        # traceback, say) calls ray.get(), whose auto-init would connect to the head
        # this session already stopped and retry it for good: the run never ends.
        auto_init.enable_auto_connect = False
    _stack.close()
    if _home:
        shutil.rmtree(_home, ignore_errors=True)


@pytest.fixture(scope="session")
def dask_address():
    if "dask" not in runners_available():
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    from prefect_future_anchor.server import dask_cluster

    with dask_cluster(n_workers=2, threads_per_worker=2) as address:
        yield address


@contextlib.contextmanager
def dask_processes_at(log_dir: Path, workers: int = 2, nthreads: int = 2, env: "dict | None" = None):
    """A ``dask scheduler`` and ``workers`` ``dask worker`` processes (each in its own
    process group, stopped by its handle); yields the scheduler address and
    ``{worker address: worker pid}``.  ``env``: extra environment (Dask config)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    bin_dir = Path(sys.executable).parent
    # The workers import the tests' task modules.
    here = str(Path(__file__).resolve().parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    environment.update(env or {})

    def start(name, argv):
        log = log_dir / f"{name}.log"
        procs.append(
            subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=environment, start_new_session=True)
        )

    try:
        start("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
        for n in range(workers):
            start(
                f"worker{n}",
                [
                    str(bin_dir / "dask"), "worker", address, "--host", "127.0.0.1",
                    "--nworkers", "1", "--nthreads", str(nthreads), "--no-dashboard",
                ],
            )
        _wait_until(lambda: procs[0].poll() is None, 5, "dask scheduler", procs[0])
        with Client(address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(workers, timeout=90)
            pids = client.run(os.getpid)
        yield address, pids
    finally:
        for proc in reversed(procs):
            stop_group(proc)


RAY_PORTS = (
    "dashboard-port",
    "node-manager-port",
    "object-manager-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)

#: CI runs several pytest sessions side by side on 2 cores: a Ray head can take minutes to start.
RAY_START_TIMEOUT = float(os.environ.get("PFA_RAY_START_TIMEOUT", "300"))

#: The tests' Ray reads nothing of the user's: no token from ~/.ray (a newer Ray left
#: one there once, and an older one then failed with "InvalidAuthToken"), no
#: /tmp/ray session or ray_current_cluster file (its own --temp-dir).
RAY_ISOLATION = {"RAY_AUTH_MODE": "disabled"}


#: A line of a Ray log that says why a process died: an error or fatal record
#: (``[time E pid tid]``, ``[time C ...]``), a failed check, a signal.
_RAY_FATAL = re.compile(r"^\[[^\]]* [EC] \d+ \d+\]|Check failed|\*\*\* SIG|[Ee]rror:")


def _raylet_logs(temp_dir: str) -> str:
    """Why a head's raylet never registered: the first error lines of its own logs
    and of its GCS (a crash's stack trace alone, the tail, does not say), then each tail."""
    out = []
    logs = sorted(Path(temp_dir).glob("session_*/logs/raylet.*")) + sorted(Path(temp_dir).glob("session_*/logs/gcs_server.*"))
    for path in logs[:6]:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        fatal = [line[:400] for line in text.splitlines() if _RAY_FATAL.search(line)][:12]
        out.append(f"--- {path.name}: first error lines\n" + "\n".join(fatal) + f"\n--- {path.name}: tail\n" + text[-800:])
    return "\n".join(out)


def _start_ray_head(log: Path, temp_dir: str, port: int) -> "subprocess.Popen":
    ray_bin = Path(sys.executable).with_name("ray")
    # Older releases (prefect 3.1 / prefect-ray 0.4.2) ship the flow to the Ray workers,
    # and its body refers to helpers in tests/flows.py by module: without this a worker
    # fails with "No module named 'flows'".
    worker_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            # Ports of its own for every service: CI runs several heads side by side, and a
            # head whose dashboard agent lost its default port to another head takes its
            # raylet down with it (the driver then exits with status 1, silently).
            *(f"--{name}={free_port()}" for name in RAY_PORTS),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=worker_path, **RAY_ISOLATION),
        start_new_session=True,
        # a session that dies without stopping it (Ray's driver exits the process with
        # status 1 when it loses its raylet) still takes the head down: SIGTERM stops
        # ``ray start --block`` and everything it started
        preexec_fn=_die_with_parent,
    )


#: Attempts at starting a head.  In CI a Ray 2.59 head's raylet twice never registered
#: with its GCS (``ray start`` gave up after RAY_raylet_start_wait_time_s) while the other
#: lanes loaded the machine; the same head starts in 15-21 s alone or beside ten busy
#: loops.  A second attempt gets new ports and a new temp dir.
RAY_START_ATTEMPTS = 2


@contextlib.contextmanager
def ray_head(log_dir: Path):
    """A local Ray head (``ray start --head --block``) with a temp dir of its own,
    stopped by its handle (the process group it leads); yields its address."""
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        port = free_port()
        log = log_dir / f"head-{attempt}.log"
        temp_dir = tempfile.mkdtemp(prefix="pfa-ray-")  # short: Ray puts unix sockets in it
        proc = _start_ray_head(log, temp_dir, port)
        try:
            _wait_until(lambda: re.search(rb"Ray runtime started", log.read_bytes()), RAY_START_TIMEOUT, "ray head", proc, log)
            break
        except RuntimeError as exc:
            raylet = _raylet_logs(temp_dir)
            stop_group(proc, timeout=60, sig=signal.SIGKILL)
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt == RAY_START_ATTEMPTS:
                raise RuntimeError(f"{exc}\n{raylet}") from None
            sys.stderr.write(f"ray head attempt {attempt} failed, starting another:\n{exc}\n{raylet}\n")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        # SIGKILL: ``ray start --block`` takes 34 s to exit on SIGTERM (its graceful stop of
        # every service); killed, the group is gone in 4 s and leaves nothing in /dev/shm.
        stop_group(proc, timeout=60, sig=signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory):
    if "ray" not in runners_available():
        pytest.skip("this environment has no prefect-ray (PFA_RUNNERS)")
    with ray_head(tmp_path_factory.mktemp("ray")) as address:
        yield address
        # A test that failed half-way can leave this process connected as a driver.  A
        # driver whose raylet goes away exits the process at once with status 1, before
        # pytest prints its failures and summary: disconnect first, then stop the head.
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            sys.stderr.write("ray_address: this process was still a driver of the session's head; disconnecting\n")
            ray.shutdown()


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)

    def messages(self, level=logging.DEBUG, containing=""):
        return [r.getMessage() for r in self.records if r.levelno >= level and containing in r.getMessage()]


@pytest.fixture
def records():
    """The records of Prefect's and the shim's loggers during one test."""
    handler = Records()
    loggers = [logging.getLogger("prefect"), logging.getLogger("prefect_future_anchor")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@pytest.fixture
def gc_warnings():
    """A counter of Prefect's "garbage collected before it resolved" records."""
    from prefect_future_anchor.demo import counting_gc_warnings

    with counting_gc_warnings() as counter:
        yield counter


@pytest.fixture
def shim():
    """``shim(**options)`` installs the shim for one test; it is uninstalled afterwards."""
    import prefect_future_anchor

    installed = []

    def install(**options):
        report = prefect_future_anchor.install(**options)
        installed.append(report)
        return report

    try:
        yield install
    finally:
        prefect_future_anchor.uninstall()


@pytest.fixture
def make_runner(request):
    """``make_runner("dask")`` / ``make_runner("ray")``: a stock runner on this session's cluster."""

    def make(kind: str):
        if kind == "dask":
            from prefect_dask import DaskTaskRunner

            return DaskTaskRunner(address=request.getfixturevalue("dask_address"))
        if kind == "ray":
            from prefect_ray import RayTaskRunner

            return RayTaskRunner(address=request.getfixturevalue("ray_address"))
        raise ValueError(kind)

    return make
