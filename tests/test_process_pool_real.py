"""Prefect's own ProcessPoolTaskRunner (prefect >= 3.4.14), issue 20.

Real parts: the session's Prefect server and the runner's own ``spawn`` worker
processes (``max_workers=2``).  Each test runs the stock control first, in the
same test.  Measured on prefect 3.9.1 before the shim touched it:

- a task that ``os._exit``s once the API shows it Running (``retries=0``):
  its run stays RUNNING in the API 10 s after the flow, the flow's
  ``future.state`` says RUNNING, ``future.wait()`` raises ``BrokenProcessPool``
  and the flow ends Completed; runs submitted after the death fail with
  ``BrokenProcessPool`` (the pool is unusable) and have no record in the API
  (their futures say Pending).  A task that exits before its first report
  reaches the parent leaves no record at all (404, future Pending);
- six 0.5 s runs submitted and not kept, the flow returning at once: 3 of 6
  ran (two running, one queued in a worker's call queue); the other three
  were cancelled by the exit's ``shutdown(cancel_futures=True)`` before they
  started and have **no record in the API at all** (404).

The tasks are this module's functions (cloudpickle ships them by value); what
a flow body shares with the test travels as an empty ``DriverSide`` (the flow
object is pickled into each run's context).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, List

import pytest

from fault_tasks import DriverSide, dies_once_running
from prefect import flow, task
from prefect import task_runners

if not hasattr(task_runners, "ProcessPoolTaskRunner"):
    pytest.skip(
        "this prefect has no ProcessPoolTaskRunner (added in 3.4.14): nothing to test here",
        allow_module_level=True,
    )

from prefect.task_runners import ProcessPoolTaskRunner  # noqa: E402


@task
def naps(i: int, directory: str) -> int:
    """Half a second of work, then a mark that it ran."""
    time.sleep(0.5)
    with open(os.path.join(directory, f"ran-{i}"), "w"):
        pass
    return i


def pool():
    return ProcessPoolTaskRunner(max_workers=2)


def api_state(task_run_id: Any) -> Any:
    """The run's state in the API, or None if the API has no record of it."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_task_run(task_run_id).state
        except ObjectNotFound:
            return None


def api_poll(task_run_id: Any, until, limit: float = 60) -> Any:
    """Readiness poll of the server (its recorder stores reports a moment late)."""
    deadline = time.monotonic() + limit
    state = None
    while time.monotonic() < deadline:
        state = api_state(task_run_id)
        if until(state):
            return state
        time.sleep(0.2)
    raise AssertionError(f"task run {task_run_id}: the API state stayed {state}")


def ran(directory) -> int:
    return len(os.listdir(directory))


# -- a worker process that dies ----------------------------------------------------------


def run_worker_death(directory: str) -> Any:
    side = DriverSide(kept={})

    def worker_dies():
        doomed = side.kept["doomed"] = dies_once_running.submit()
        try:
            doomed.wait()
        except Exception as exc:  # the chained future's BrokenProcessPool, stock and shimmed
            side.kept["wait"] = exc
        later = side.kept["later"] = naps.submit(0, directory)
        try:
            later.wait()
        except Exception:
            pass

    flow(worker_dies, name="process-dies", task_runner=pool())()
    return side.kept


def test_a_dead_worker_process_s_run_ends_crashed(shim, tmp_path):
    """Stock: the dead process's run stays RUNNING in the API and its future says
    so.  Shimmed: Crashed in the API with the cause, the future says the same;
    the run submitted after the pool broke never ran: no record in the API
    (as stock), its future says Crashed and why."""
    stock = run_worker_death(str(tmp_path / "stock"))
    assert type(stock["wait"]).__name__ == "BrokenProcessPool"
    assert api_poll(stock["doomed"].task_run_id, lambda s: s is not None).is_running()
    assert stock["doomed"].state.is_running()  # the zombie
    assert not stock["later"].state.is_final() and api_state(stock["later"].task_run_id) is None

    report = shim()
    assert report.patch("process-pool.final-states").state == "applied"
    kept = run_worker_death(str(tmp_path / "shim"))
    state = api_poll(kept["doomed"].task_run_id, lambda s: s is not None and s.is_final())
    assert state.is_crashed(), state
    assert "BrokenProcessPool" in state.message and "worker process died" in state.message
    assert kept["doomed"].state.is_crashed() and kept["doomed"].state.id == state.id
    later = kept["later"].state
    assert later.is_crashed() and "never reached a worker process" in later.message, later
    assert api_state(kept["later"].task_run_id) is None


# -- runs not kept ------------------------------------------------------------------------


def run_unkept(directory: str, keep: bool = False, fails: bool = False) -> List[Any]:
    """Six 0.5 s runs submitted, the flow returning (or raising) at once; the task
    run ids (and, with ``keep``, the futures) come back."""
    os.makedirs(directory)
    side = DriverSide(ids=[], futures=[])

    def fire_and_forget():
        for i in range(6):
            future = naps.submit(i, directory)
            side.ids.append(future.task_run_id)
            if keep:
                side.futures.append(future)
        if fails:
            raise RuntimeError("the flow fails with its runs in flight")

    flow(fire_and_forget, name="unkept", task_runner=pool())(return_state=True)
    return side.futures or side.ids


def test_unkept_runs_follow_on_exit_and_a_failing_flow_cancels_them_at_once(shim, tmp_path):
    """Stock: some of six never run, leave no record in the API and their futures
    stay Pending (its exit is the same whether the flow failed or not).
    Shimmed (wait, the default): all six run, not kept, and end Completed.
    on_exit='cancel', and a flow that raises under 'wait': the runs no worker
    had taken are cancelled, their futures say why; the ones already in a
    worker run on and end Completed: nothing is left unfinished in the API."""
    stock = run_unkept(str(tmp_path / "stock"), keep=True)
    assert ran(tmp_path / "stock") < 6
    lost = [f for f in stock if api_state(f.task_run_id) is None]
    assert lost and not any(f.state.is_final() for f in lost)

    shim()
    waited = run_unkept(str(tmp_path / "wait"))
    assert ran(tmp_path / "wait") == 6
    for run in waited:
        assert api_poll(run, lambda s: s is not None and s.is_final()).is_completed()

    for name, on_exit, fails, why in (
        ("cancel", "cancel", False, "on_exit='cancel'"),
        ("fails", "wait", True, "unresolved when the flow run"),
    ):
        shim(on_exit=on_exit)
        futures = run_unkept(str(tmp_path / name), keep=True, fails=fails)
        assert ran(tmp_path / name) < 6, name
        cancelled = [f for f in futures if f.state.is_cancelled()]
        assert cancelled and all(why in f.state.message for f in cancelled), name
        for future in futures:
            if any(future is c for c in cancelled):
                assert api_state(future.task_run_id) is None  # never started: nothing there to finish
            else:  # in a worker already: ran on
                assert api_poll(future.task_run_id, lambda s: s is not None and s.is_final()).is_completed()


# -- the patch itself ---------------------------------------------------------------------


def _attributes() -> dict:
    """Every attribute of every class in prefect.task_runners and prefect.futures."""
    import prefect.futures

    found = {}
    for module in (task_runners, prefect.futures):
        for name, value in vars(module).items():
            found[(module.__name__, name)] = value
            if isinstance(value, type) and value.__module__ == module.__name__:
                for attribute, member in vars(value).items():
                    found[(module.__name__, name, attribute)] = member
    return found


def test_only_submit_and_exit_are_patched_and_uninstall_restores_them():
    import prefect_future_anchor

    before = _attributes()
    prefect_future_anchor.install()
    try:
        during = _attributes()
    finally:
        prefect_future_anchor.uninstall()
    after = _attributes()
    changed = {key for key in before if during.get(key) is not before[key]}
    assert changed == {
        ("prefect.task_runners", "ProcessPoolTaskRunner", "submit"),
        ("prefect.task_runners", "ProcessPoolTaskRunner", "__exit__"),
    }
    assert set(during) == set(before) == set(after)
    assert all(after[key] is before[key] for key in before)


def test_the_environment_switch_patches_the_process_pool_on_import():
    """PREFECT_FUTURE_ANCHOR=1: ``import prefect`` patches the pool, nothing of
    the shim loaded before it.  Control: this process, not installed, has the
    stock methods."""
    probe = (
        "import sys; before = 'prefect_future_anchor' in sys.modules or 'wrapt' in sys.modules; "
        "from prefect.task_runners import ProcessPoolTaskRunner as R; "
        "print(before, hasattr(R.__dict__['submit'], '__wrapped__'), hasattr(R.__dict__['__exit__'], '__wrapped__'))"
    )
    env = dict(os.environ, PREFECT_FUTURE_ANCHOR="1")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
    for method in ("submit", "__exit__"):
        assert not hasattr(ProcessPoolTaskRunner.__dict__[method], "__wrapped__")
