"""Throw-away services on loopback for the demo, the tests and the benchmarks:
a Prefect server (:func:`prefect_server`) and a Dask LocalCluster (:func:`dask_cluster`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, get SIGTERM if the process that
    started the server dies without stopping it (a killed test run)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except Exception:
            pass


#: Server services a throw-away server does without (see :func:`prefect_server`).
_IDLE_SERVICES = (
    "SCHEDULER",
    "LATE_RUNS",
    "FOREMAN",
    "CANCELLATION_CLEANUP",
    "PAUSE_EXPIRATIONS",
    "FLOW_RUN_NOTIFICATIONS",
    "TRIGGERS",
    "EVENT_PERSISTER",
)


def stop_group(
    proc: "subprocess.Popen", timeout: float = 30, sig: int = signal.SIGTERM, kill_timeout: "float | None" = None
) -> None:
    """Stop the process group ``proc`` leads (by its handle, never by name): ``sig``,
    then SIGKILL if it has not ended after ``timeout`` (then wait ``kill_timeout``,
    by default ``timeout``)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout if kill_timeout is None else kill_timeout)


@contextlib.contextmanager
def prefect_server(startup_timeout: float = 180, home: "str | None" = None, port: "int | None" = None) -> Iterator[str]:
    """A throw-away ``prefect server start`` on loopback, stopped by its handle.

    Exports ``PREFECT_API_URL`` so that Dask and Ray workers started afterwards
    report to it (older prefect-ray workers otherwise start servers of their own).
    ``home`` and ``port`` of a server stopped before start it again on the same
    address and database (the API-outage tests).  A ``home`` created here (none given)
    is removed with its database once the server has stopped; a given one is kept.
    """
    created = home is None
    home = home or tempfile.mkdtemp(prefix="pfa-prefect-home-")
    port = port or free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=home,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_TELEMETRY_ENABLED="false",
        # Registering blocks at start-up imports every prefect.collections entry point;
        # on prefect 3.0.x importing prefect_ray there deadlocks the server (FACTS.md).
        PREFECT_API_BLOCKS_REGISTER_ON_START="false",
        PREFECT_MEMOIZE_BLOCK_AUTO_REGISTRATION="false",
    )
    # Only the service that records task-run states from the engines' events: the others
    # (schedules, late runs, automations, the event archive...) only load a 2-core machine
    # and its SQLite file.  Names of prefect 3.0, still read by every 3.x; the caller's
    # environment wins.
    for service in _IDLE_SERVICES:
        env.setdefault(f"PREFECT_API_SERVICES_{service}_ENABLED", "false")
    env.pop("PREFECT_API_URL", None)
    # The console script: prefect < 3.2 has no ``python -m prefect``.
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    log_path = Path(home) / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited early:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prefect server not ready in {startup_timeout}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.25)
        previous = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ.update(PREFECT_API_URL=url, PREFECT_HOME=home)
        try:
            yield url
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        try:
            stop_group(proc)
        finally:
            if created:
                shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def dask_cluster(n_workers: int = 2, threads_per_worker: int = 2) -> Iterator[str]:
    """A Dask ``LocalCluster`` of worker processes on 127.0.0.1, no dashboard;
    yields the scheduler address and closes the cluster by its handle.
    ``n_workers=0`` gives a scheduler alone."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
    )
    try:
        yield cluster.scheduler_address
    finally:
        _close_cluster(cluster)


def _close_cluster(cluster: object) -> None:
    """Close a LocalCluster; a worker slow to stop is killed by its nanny, whose wait for
    the dead process can still time out on a loaded machine (seen in CI: TimeoutError
    from ``Nanny.kill``).  That is not a failure of whatever used the cluster: the
    processes are its own children, killed by handle, so say so and go on."""
    try:
        cluster.close(timeout=60)  # type: ignore[attr-defined]
    except (TimeoutError, asyncio.TimeoutError, OSError) as exc:  # asyncio's is its own class before 3.11
        sys.stderr.write(f"dask_cluster: the cluster did not close cleanly ({exc!r}); its workers were killed\n")
        for nanny in list(getattr(cluster, "workers", {}).values()):
            process = getattr(getattr(nanny, "process", None), "process", None)
            pid = getattr(process, "pid", None)
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
