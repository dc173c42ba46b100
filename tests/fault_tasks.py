"""Tasks of the fault tests, in a plain module the Dask and Ray workers can import."""

from __future__ import annotations

import os

from prefect import task


@task
def parent(i):
    return i


@task
def child(x):
    return x * 2


@task
def raises(x):
    raise ValueError(f"child of {x} fails on purpose")


@task
def exits(x):
    os._exit(1)


class DriverSide:
    """State the flow body shares with the test's threads (locks, events, lists).

    Dask ships the flow function, closure and all, to the workers inside the run
    context; there this state is never used, so it travels as an empty copy.
    """

    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def __reduce__(self):
        return (DriverSide, ())


def _own_run_visible(limit: float = 60.0) -> None:
    """Wait (bounded) until this task run's Running state is in the API: the
    engine reports it asynchronously, and a process that dies first leaves the
    API nothing to correct.  A readiness poll of the server, not of the shim."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.runtime import task_run

    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                state = client.read_task_run(task_run.id).state
                if state is not None and state.is_running():
                    return
            except Exception:
                pass
            time.sleep(0.1)


@task
def dies_once_running():
    """Kills its own worker process once the API shows it Running."""
    _own_run_visible()
    os._exit(1)


@task
def sleeps(seconds: float):
    """Holds a worker thread (its worker is killed under it)."""
    import time

    time.sleep(seconds)


@task
def dies_when(path: str, limit: float = 120.0):
    """Kills its own worker process once ``path`` exists (bounded)."""
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    os._exit(1)


@task
def blocks(path: str, limit: float = 120.0):
    """Runs until ``path`` exists (the test creates it when done; bounded)."""
    import time

    deadline = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.1)
    return "released"
