"""What a Dask scheduler holds, asked in the scheduler process (``Client.run_on_scheduler``).

Imports nothing of prefect's: unpickling a probe must not import prefect into
the scheduler, which is one of the things it reports."""

from __future__ import annotations


def keys(dask_scheduler=None) -> int:
    return len(dask_scheduler.tasks)


def held(dask_scheduler=None):
    """In the scheduler: how many Prefect ``Task`` objects and serialized contexts
    are alive, whether prefect was ever imported there, and the payload keys
    (all, and those whose data a worker holds)."""
    import gc
    import sys

    gc.collect()
    tasks = contexts = 0
    for obj in gc.get_objects():
        kind = type(obj)
        if kind.__name__ == "Task" and kind.__module__ == "prefect.tasks":
            tasks += 1
        elif kind is dict and "settings_context" in obj and "flow_run_context" in obj:
            contexts += 1
    return {
        "tasks": tasks,
        "contexts": contexts,
        "prefect imported": "prefect" in sys.modules,
        "keys": len(dask_scheduler.tasks),
        "payload keys": sum(1 for key in dask_scheduler.tasks if str(key).startswith("prefect-payload-")),
        # a released payload whose run is still held stays known (as Dask keeps any
        # dependency of a held result), without its data
        "payloads in memory": sum(
            1 for key, ts in dask_scheduler.tasks.items() if str(key).startswith("prefect-payload-") and ts.state == "memory"
        ),
    }
