"""prefect-dask: ``DaskTaskRunner`` / ``PrefectDaskFuture``.

``DaskTaskRunner.submit`` unwraps upstream ``PrefectDaskFuture`` objects in
``parameters`` (and, from 0.3.2, ``wait_for``) with ``_optimize_futures``; the
dropped wrapper's ``__del__`` warns on prefect-dask 0.3.0-0.3.5.
"""

from __future__ import annotations

from typing import Any, Callable

from .integration import RunnerIntegration


class DaskIntegration(RunnerIntegration):
    name = "dask"
    distribution = "prefect-dask"
    module_name = "prefect_dask.task_runners"
    runner_name = "DaskTaskRunner"
    future_name = "PrefectDaskFuture"
    conversion_name = "_optimize_futures"

    def when_done(self, raw: Any, callback: Callable[..., None]) -> None:
        # Fires on success, error or cancellation, on distributed's callback thread.
        raw.add_done_callback(callback)

    def is_done(self, raw: Any) -> bool:
        return raw.done()

    def cancel(self, raw: Any) -> None:
        raw.cancel()


integration = DaskIntegration()
