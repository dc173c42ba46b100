"""The real parts every benchmark runs against, started here and stopped by handle:
one Prefect server (SQLite, or PostgreSQL with ``PFA_PREFECT_DB=postgres``), Dask
``LocalCluster`` objects and Ray heads, all on 127.0.0.1.

Import this before prefect: the server's address must be in the environment
before Prefect (and the Dask workers it spawns) read their settings.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

os.environ.setdefault("PREFECT_TELEMETRY_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# a local Ray on a busy 2-core machine can take longer than Ray's default to register its raylet
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
# Ray starts its workers at nice 15: beside other work at nice 0 they crawl (FACTS.md)
os.environ.setdefault("RAY_worker_niceness", "0")

#: How long a service of this file may take to start on a loaded 2-core machine.
START_TIMEOUT = float(os.environ.get("PFA_SERVICE_START_TIMEOUT", "300"))


def _ready(check, proc: "subprocess.Popen", log: Path, what: str) -> None:
    """Readiness poll of a service this file started (not a synchronisation)."""
    deadline = time.monotonic() + START_TIMEOUT
    while not check():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready in {START_TIMEOUT:g} s:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise RuntimeError("no PostgreSQL: apt-get install -y postgresql (Debian) or put initdb/postgres on PATH")


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throw-away PostgreSQL cluster (``initdb`` in a temp dir, ``postgres`` on a free
    port of 127.0.0.1 in the foreground of its own process group), stopped by its handle
    (SIGINT: PostgreSQL's fast shutdown); yields an asyncpg URL for Prefect.

    PostgreSQL refuses to run as root: as root the cluster runs as the ``postgres``
    account Debian's package creates."""
    from prefect_future_anchor.server import _die_with_parent, free_port, stop_group  # SIGTERM if this process dies

    bin_dir = _postgres_bin()
    as_root = os.geteuid() == 0
    user = pwd.getpwnam("postgres") if as_root else None
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    root = Path(tempfile.mkdtemp(prefix="pfa-pg-"))
    if user:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log = root / "data", root / "postgres.log"
    proc = None
    try:
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", "prefect", "--auth=trust", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=START_TIMEOUT, cwd=root, **ids,
        )
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root),
                 "-c", "max_connections=200", "-c", "fsync=off", "-c", "synchronous_commit=off"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
                cwd=root, **ids,
            )
        if user:
            os.chown(log, user.pw_uid, user.pw_gid)
        _ready(lambda: subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                                      capture_output=True).returncode == 0, proc, log, "postgres")
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "prefect", "prefect"],
                       check=True, capture_output=True, timeout=START_TIMEOUT)
        yield f"postgresql+asyncpg://prefect@127.0.0.1:{port}/prefect"
    finally:
        if proc is not None:
            stop_group(proc, 60, signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


def database() -> str:
    """The Prefect server's database for this run: ``PFA_PREFECT_DB`` (sqlite, postgres)."""
    kind = os.environ.get("PFA_PREFECT_DB", "sqlite").lower() or "sqlite"
    if kind not in ("sqlite", "postgres"):
        raise ValueError(f"PFA_PREFECT_DB={kind!r}: sqlite or postgres")
    return kind


@contextlib.contextmanager
def prefect_server():
    """The package's throw-away server (sets PREFECT_API_URL), unless one is given;
    backed by a PostgreSQL cluster of its own with ``PFA_PREFECT_DB=postgres``
    (the server reads ``PREFECT_API_DATABASE_CONNECTION_URL`` from the environment)."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect_future_anchor.server import prefect_server as start

    with contextlib.ExitStack() as stack:
        if database() == "postgres":
            url = stack.enter_context(postgres())
            stack.callback(os.environ.pop, "PREFECT_API_DATABASE_CONNECTION_URL", None)
            os.environ["PREFECT_API_DATABASE_CONNECTION_URL"] = url
        yield stack.enter_context(start(startup_timeout=START_TIMEOUT))


def dask_cluster(n_workers: int = 2, threads_per_worker: int = 2):
    """A LocalCluster (worker processes; ``n_workers=0``: a scheduler only)."""
    from prefect_future_anchor.server import dask_cluster as cluster

    return cluster(n_workers=n_workers, threads_per_worker=threads_per_worker)


#: Every port a Ray head opens, each given one of its own (heads of other programs run beside).
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


@contextlib.contextmanager
def ray_head(num_cpus: int = 2, pythonpath: Optional[str] = None, keep_idle_workers: bool = False) -> Iterator[str]:
    """A local Ray head (``ray start --head --block``) with a temp dir of its own (never
    /tmp/ray), stopped by its handle (the process group it leads); yields its address.
    Drivers that connect to it (``RayTaskRunner(address=...)``) start and stop nothing but
    themselves, so no flow's figure carries a Ray start-up.

    ``keep_idle_workers``: the raylet keeps a driver's idle worker processes until that
    driver ends (``RAY_idle_worker_killing_time_threshold_ms``, one hour here; Ray's default
    kills the idle workers above one per CPU after 1 s, and each new one imports Ray and
    Prefect again)."""
    from prefect_future_anchor.server import _die_with_parent, free_port, stop_group  # SIGTERM if this process dies

    ray_bin = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env["RAY_raylet_start_wait_time_s"] = str(int(START_TIMEOUT * 0.8))  # the head gives up before _ready does
    if keep_idle_workers:
        env["RAY_idle_worker_killing_time_threshold_ms"] = str(3_600_000)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, os.environ.get("PYTHONPATH")]))
    for attempt in (1, 2):  # on a loaded 2-core machine a raylet now and then never registers
        temp_dir = tempfile.mkdtemp(prefix="pfa-ray-")  # short: Ray puts unix sockets in it
        log = Path(temp_dir) / "head.log"
        port = free_port()
        argv = [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                f"--num-cpus={num_cpus}", "--include-dashboard=false", "--disable-usage-stats",
                f"--temp-dir={temp_dir}", *(f"--{name}={free_port()}" for name in RAY_PORTS)]
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        try:
            _ready(lambda: re.search(rb"Ray runtime started", log.read_bytes()), proc, log, "ray head")
            break
        except RuntimeError as exc:
            stop_group(proc, 60)
            shutil.rmtree(temp_dir, ignore_errors=True)
            if attempt == 2:
                raise
            print(f"ray head attempt {attempt} failed, starting another: {str(exc)[:300]}", file=sys.stderr)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop_group(proc, 60)
        shutil.rmtree(temp_dir, ignore_errors=True)
