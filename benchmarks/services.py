"""The real parts every benchmark runs against, started here and stopped by handle:
one Prefect server and Dask ``LocalCluster`` objects, all on 127.0.0.1.

Import this before prefect: the server's address must be in the environment
before Prefect (and the Dask workers it spawns) read their settings.
"""

from __future__ import annotations

import contextlib
import os

os.environ.setdefault("PREFECT_TELEMETRY_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
# a local Ray on a busy 2-core machine can take longer than Ray's default to register its raylet
os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")


@contextlib.contextmanager
def prefect_server():
    """The package's throw-away server (sets PREFECT_API_URL), unless one is given."""
    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from prefect_future_anchor.server import prefect_server as start

    with start(startup_timeout=120) as url:
        yield url


def dask_cluster(n_workers: int = 2, threads_per_worker: int = 2):
    """A LocalCluster (worker processes; ``n_workers=0``: a scheduler only)."""
    from prefect_future_anchor.server import dask_cluster as cluster

    return cluster(n_workers=n_workers, threads_per_worker=threads_per_worker)
