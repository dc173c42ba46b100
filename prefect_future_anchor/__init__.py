"""Make Prefect 3 task-run futures on Dask and Ray behave as Prefect documents them.

``DaskTaskRunner`` and ``RayTaskRunner`` swap upstream Prefect futures for raw
``distributed.Future`` / ``ray.ObjectRef`` objects when a dependent task is
submitted, and nothing keeps the Prefect wrapper alive (upstream issue 17517):
on prefect 3.0.0-3.4.6 every dropped parent logs "A future was garbage
collected before it resolved"; on every 3.x release a run submitted and not
kept is lost when the flow ends.

    import prefect_future_anchor
    prefect_future_anchor.install()
"""

from .anchor import live_anchors, wait_released
from .lifecycle import (
    PatchStatus,
    Report,
    UnsupportedReleaseError,
    install,
    is_installed,
    status,
    uninstall,
)

__version__ = "0.1.0"

__all__ = [
    "PatchStatus",
    "Report",
    "UnsupportedReleaseError",
    "install",
    "is_installed",
    "live_anchors",
    "wait_released",
    "status",
    "uninstall",
    "__version__",
]
