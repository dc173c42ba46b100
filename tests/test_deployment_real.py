"""Issue 13: the deployment path end to end, on real parts only.

tests/deployed_flow.py (which never imports the shim) runs the seed pattern of
upstream issue 17517 and then fire-and-forget submits on a ``DaskTaskRunner``.
It is run four ways, each started through the API:

- deployed from its local source directory to a process work pool made through
  the client, run by ``prefect worker start``: one deployment with
  ``job_variables={"env": {"PREFECT_FUTURE_ANCHOR": "1"}}``, the stock control without;
- served by ``flow.serve()``: one serve process with ``PREFECT_FUTURE_ANCHOR=1`` in
  its environment, the stock control without.

What is asserted is read back through the Prefect client (the flow run's logs and
its task runs); the fire-and-forget tasks also leave a file each, the ground truth
of which of them ran.  One worker serves both deployments and the four runs go
concurrently: the module costs one worker start, two serve starts and about one
flow run.  Everything started is stopped by its handle.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import GC_WARNING, ROOT, _wait_until, runners_available, stock_warns
from prefect_future_anchor.server import stop_group

TESTS = ROOT / "tests"
FLOW_FILE = "deployed_flow.py"
SWITCHES = ("PREFECT_FUTURE_ANCHOR", "PREFECT_FUTURE_ANCHOR_ON_EXIT", "PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT")
#: The shimmed deployment's job variables (the fail-check of issue 13 empties them).
SHIMMED_JOB_VARIABLES = {"env": {"PREFECT_FUTURE_ANCHOR": "1"}}
START_TIMEOUT = 120  # a worker / serve process up and its deployment registered
RUN_TIMEOUT = 240  # every flow run final and its process ended
SETTLE_TIMEOUT = 60  # the API shows what the ended run processes reported
PATHS = ("worker", "serve")


@dataclass
class Outcome:
    """One flow run, as the API (and its marker directory) shows it once its process has ended."""

    path: str
    variant: str
    flow_run_id: object
    marker_dir: Path
    state: object = None
    messages: list = field(default_factory=list)
    task_runs: list = field(default_factory=list)
    files: int = 0

    @property
    def pid_file(self) -> Path:
        return self.marker_dir / "flow.pid"

    def runs(self, task_name: str) -> list:
        return [run for run in self.task_runs if run.name.startswith(task_name + "-")]

    def completed(self, task_name: str) -> int:
        return sum(1 for run in self.runs(task_name) if run.state is not None and run.state.is_completed())

    @property
    def warnings(self) -> int:
        return sum(1 for message in self.messages if GC_WARNING in message)

    @property
    def activation(self) -> str:
        from deployed_flow import ACTIVATION_LINE

        return next((m for m in self.messages if m.startswith(ACTIVATION_LINE)), "")

    def summary(self) -> str:
        return (
            f"{self.path}/{self.variant}: state={self.state.type.value if self.state else None} "
            f"warnings={self.warnings} forgotten files={self.files} "
            f"forgotten completed={self.completed('forgotten')} of {len(self.runs('forgotten'))} task runs, "
            f"seeds completed={self.completed('task1')}+{self.completed('task2')}"
        )

    def describe(self) -> str:
        states = sorted(f"{run.name}={run.state.type.value if run.state else None}" for run in self.task_runs)
        return (
            f"{self.summary()}\nflow run {self.flow_run_id}: {self.state}\ntask runs: {states}\n"
            "logs:\n" + "\n".join(self.messages[-60:])
        )


def child_environment(**values: str) -> dict:
    """What the worker, the serve processes and their runs need: this session's server,
    logs sent to the API (conftest turns that off for the test process), no switch."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES and k != "PYTHONPATH"}
    env.update(
        PREFECT_API_URL=os.environ["PREFECT_API_URL"],
        PREFECT_HOME=os.environ["PREFECT_HOME"],
        PREFECT_TELEMETRY_ENABLED="false",
        PREFECT_LOGGING_TO_API_ENABLED="true",
        PREFECT_WORKER_QUERY_SECONDS="2",  # default 10: pick the runs up sooner
        PREFECT_RUNNER_POLL_FREQUENCY="2",
    )
    env.update(values)
    return env


def start(command: list, log: Path, env: dict) -> subprocess.Popen:
    """A process in a session of its own, stopped by its handle (``stop_group``)."""
    with log.open("wb") as out:
        return subprocess.Popen(
            command, cwd=TESTS, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie not yet reaped by its parent has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def run_process_alive(outcome: Outcome) -> bool:
    """The run's Completed state is set before its task runner exits (and drains): its
    process ending says that nothing the run started still runs."""
    return outcome.pid_file.exists() and pid_alive(int(outcome.pid_file.read_text()))


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def read_logs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    messages, page_size = [], 200
    while True:
        page = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
            limit=page_size,
            offset=len(messages),
        )
        messages.extend(log.message for log in page)
        if len(page) < page_size:
            return messages


def read_task_runs(client, flow_run_id) -> list:
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

    return client.read_task_runs(
        task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])), limit=200
    )


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Start a worker on a new process pool and two serve processes, run the flow four
    ways through the API, wait until every run is final and its process has ended, and
    read back what the API shows: ``{(path, variant): Outcome, (path, "console"): n}``,
    n being how many false warnings the shimmed runs' own process printed (all loggers;
    None where it shares its console with the stock runs)."""
    if "dask" not in runners_available():
        pytest.skip("this environment has no prefect-dask (PFA_RUNNERS)")
    if not os.environ.get("PREFECT_API_URL"):
        pytest.skip("no Prefect server in this session (PFA_NO_SERVER)")
    import deployed_flow
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.workers.process import ProcessWorker

    base = tmp_path_factory.mktemp("deployment")
    tag = uuid.uuid4().hex[:8]
    pool = f"pfa-process-{tag}"
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    began = time.monotonic()

    def phase(what: str) -> None:  # shown with the failure of any test of this module
        print(f"[{time.monotonic() - began:6.1f}s] {what}", file=sys.stderr)

    processes = {}  # "worker" / "serve-shimmed" / "serve-stock" -> (Popen, log)
    runs = {}  # (path, variant) -> Outcome

    def owner(key):
        return processes["worker" if key[0] == "worker" else f"serve-{key[1]}"]

    try:
        with get_client(sync_client=True) as client:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
            # The interpreters start while the worker's deployments are made.
            processes["worker"] = (
                start(
                    [prefect_bin, "worker", "start", "--pool", pool, "--type", "process"],
                    base / "worker.log",
                    child_environment(),
                ),
                base / "worker.log",
            )
            for variant, switch in (("shimmed", {"PREFECT_FUTURE_ANCHOR": "1"}), ("stock", {})):
                log = base / f"serve-{variant}.log"
                command = [sys.executable, FLOW_FILE, f"serve-{variant}-{tag}"]
                processes[f"serve-{variant}"] = (start(command, log, child_environment(**switch)), log)

            source = flow.from_source(source=str(TESTS), entrypoint=f"{FLOW_FILE}:deployed_seed")
            for variant, job_variables in (("shimmed", SHIMMED_JOB_VARIABLES), ("stock", {})):
                source.deploy(
                    name=f"worker-{variant}-{tag}",
                    work_pool_name=pool,
                    job_variables=job_variables,
                    build=False,
                    push=False,
                    print_next_steps=False,
                    ignore_warnings=True,
                )
            phase("worker deployments made")

            for key in ((path, variant) for path in PATHS for variant in ("shimmed", "stock")):
                name = f"deployed-seed/{key[0]}-{key[1]}-{tag}"
                found = []
                proc, log = owner(key)
                _wait_until(
                    lambda name=name, found=found: found.append(client.read_deployment_by_name(name)) or True,
                    START_TIMEOUT,
                    f"deployment {name}",
                    proc,
                    log,
                )
                marker_dir = base / f"{key[0]}-{key[1]}"
                marker_dir.mkdir()
                flow_run = client.create_flow_run_from_deployment(
                    found[0].id, parameters={"marker_dir": str(marker_dir)}
                )
                runs[key] = Outcome(key[0], key[1], flow_run.id, marker_dir)
            phase("four runs created")

            # A readiness poll of the services this fixture started: one request a second.
            deadline = time.monotonic() + RUN_TIMEOUT
            pending, error = dict(runs), None
            while pending:
                ids = FlowRunFilter(id=FlowRunFilterId(any_=[o.flow_run_id for o in pending.values()]))
                try:
                    states = {run.id: run.state for run in client.read_flow_runs(flow_run_filter=ids)}
                except Exception as exc:  # a busy server: ask again, report it if it lasts
                    states, error = {}, exc
                for key, outcome in list(pending.items()):
                    outcome.state = states.get(outcome.flow_run_id)
                    if outcome.state is not None and outcome.state.is_final() and not run_process_alive(outcome):
                        phase(f"{key[0]}/{key[1]} final, its process ended")
                        del pending[key]
                stopped = [name for name, (proc, _log) in processes.items() if proc.poll() is not None]
                if pending and (stopped or time.monotonic() > deadline):
                    tails = "\n".join(f"--- {log.name}\n{tail(log)}" for _proc, log in processes.values())
                    raise RuntimeError(
                        f"runs {sorted(pending)} not ended within {RUN_TIMEOUT}s (exited: {stopped}; "
                        f"last API error: {error!r})\n{tails}"
                    )
                if pending:
                    time.sleep(1)

            # Whatever the ended processes reported has been sent; the server records task
            # runs from events, so wait until it shows every seed run final and the end
            # line logged and, for each fire-and-forget run that left its file, a Completed run.
            deadline = time.monotonic() + SETTLE_TIMEOUT
            for outcome in runs.values():
                outcome.files = len(list(outcome.marker_dir.glob("forgotten-*.done")))

                def settled(outcome=outcome):
                    outcome.messages = read_logs(client, outcome.flow_run_id)
                    outcome.task_runs = read_task_runs(client, outcome.flow_run_id)
                    seeds = outcome.runs("task1") + outcome.runs("task2")
                    return (
                        deployed_flow.END_LINE in outcome.messages
                        and len(seeds) == 2 * deployed_flow.SEED_PAIRS
                        and all(run.state and run.state.is_final() for run in seeds)
                        and outcome.completed("forgotten") >= outcome.files
                    )

                try:
                    _wait_until(settled, max(1.0, deadline - time.monotonic()), "API records")
                except RuntimeError:
                    pass  # the tests report what is there
                phase(outcome.summary())
        found = dict(runs)
        for path in PATHS:
            shimmed_log, stock_log = (owner((path, variant))[1] for variant in ("shimmed", "stock"))
            # serve: the shimmed runs' process has a console of its own; the worker's is shared
            found[path, "console"] = (
                shimmed_log.read_text(errors="replace").count(GC_WARNING) if shimmed_log != stock_log else None
            )
        yield found
    finally:
        for proc, _log in processes.values():
            stop_group(proc)
        for outcome in runs.values():  # newer runners start run processes in sessions of their own
            if run_process_alive(outcome):
                try:
                    os.kill(int(outcome.pid_file.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.mark.parametrize("path", PATHS)
def test_shimmed_run_has_no_false_warning_completes_every_forgotten_run_and_was_activated(outcomes, path):
    from deployed_flow import FORGOTTEN, SEED_PAIRS

    outcome = outcomes[path, "shimmed"]
    assert outcome.state is not None and outcome.state.is_completed(), outcome.describe()
    assert outcome.completed("task1") == outcome.completed("task2") == SEED_PAIRS, outcome.describe()
    assert outcome.warnings == 0, outcome.describe()
    # None printed outside the run's logger either, where the shimmed process has a console of
    # its own (serve).  (A stock process also prints warnings of futures collected after its
    # run's logger closed, so its console and its API logs need not agree.)
    if outcomes[path, "console"] is not None:
        assert outcomes[path, "console"] == 0, outcome.describe()
    # Every fire-and-forget run ran (its file) and the API shows it Completed.
    assert outcome.files == FORGOTTEN, outcome.describe()
    assert outcome.completed("forgotten") == FORGOTTEN, outcome.describe()
    # The wait for them is in the run's own logs (issue 33, item 1); the stock run has no such line.
    assert [m for m in outcome.messages if "prefect-future-anchor: waiting up to" in m], outcome.describe()
    assert not [m for m in outcomes[path, "stock"].messages if "prefect-future-anchor: " in m]
    # The switch reached the run's process and its start-up hook patched the runner there.
    assert "installed=True" in outcome.activation, outcome.describe()
    assert "dask.track" in outcome.activation and "hook=pth" in outcome.activation, outcome.describe()


@pytest.mark.parametrize("path", PATHS)
def test_stock_control_shows_the_defect(outcomes, path):
    from deployed_flow import FORGOTTEN, SEED_PAIRS

    outcome = outcomes[path, "stock"]
    assert outcome.state is not None and outcome.state.is_completed(), outcome.describe()
    assert "installed=False" in outcome.activation, outcome.describe()
    assert outcome.completed("task1") == outcome.completed("task2") == SEED_PAIRS, outcome.describe()
    if stock_warns("dask"):
        assert outcome.warnings > 0, outcome.describe()
    else:  # prefect-dask >= 0.3.6 has no such warning
        assert outcome.warnings == 0, outcome.describe()
    # The loss the shim prevents: the run ended Completed, yet fire-and-forget runs never
    # ran (no file) and the API shows no Completed run for them.
    assert outcome.files < FORGOTTEN, outcome.describe()
    assert outcome.completed("forgotten") < FORGOTTEN, outcome.describe()


def test_a_cancel_from_the_api_stops_the_wait_of_a_worker_run(tmp_path):
    """Issue 33, item 3, through a process work pool: while the shim waits at the end of
    a deployed run for a run it did not keep, the flow run shows Running; a Cancel of
    it (as the UI sends it) cancels that run and ends the flow run Cancelled, within
    seconds, and every run is final.  Control: the same deployment with
    ``flow.drain-in-run`` off waits at the runner's exit, where the API shows the run
    Completed already and the Cancel changes nothing."""
    if "dask" not in runners_available() or not os.environ.get("PREFECT_API_URL"):
        pytest.skip("needs prefect-dask and a Prefect server")
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.states import Cancelling
    from prefect.workers.process import ProcessWorker

    tag = uuid.uuid4().hex[:8]
    pool = f"pfa-cancel-{tag}"
    prefect_bin = str(Path(sys.executable).with_name("prefect"))
    variants = {"in-run": {"PREFECT_FUTURE_ANCHOR": "1"}, "at-exit": {"PREFECT_FUTURE_ANCHOR": "1", "PREFECT_FUTURE_ANCHOR_DISABLE": "flow.drain-in-run"}}
    worker = start([prefect_bin, "worker", "start", "--pool", pool, "--type", "process"], tmp_path / "worker.log", child_environment())
    dirs = {name: tmp_path / name for name in variants}
    ids = {}
    try:
        with get_client(sync_client=True) as client:
            client.create_work_pool(
                WorkPoolCreate(name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template())
            )
            source = flow.from_source(source=str(TESTS), entrypoint=f"{FLOW_FILE}:deployed_holder")
            for name, env in variants.items():
                deployment_id = source.deploy(
                    name=f"holder-{name}-{tag}", work_pool_name=pool, job_variables={"env": env},
                    build=False, push=False, print_next_steps=False, ignore_warnings=True,
                )
                dirs[name].mkdir()
                ids[name] = client.create_flow_run_from_deployment(deployment_id, parameters={"marker_dir": str(dirs[name])}).id

            def waiting(name):
                return any("prefect-future-anchor: waiting up to" in m for m in read_logs(client, ids[name]))

            for name in variants:
                _wait_until(lambda name=name: waiting(name), RUN_TIMEOUT, f"the {name} run's waiting line", worker, tmp_path / "worker.log")
            assert client.read_flow_run(ids["in-run"]).state.is_running()
            assert client.read_flow_run(ids["at-exit"]).state.is_completed()
            asked = time.monotonic()
            for name in variants:
                client.set_flow_run_state(ids[name], Cancelling())
            _wait_until(lambda: read_task_runs(client, ids["in-run"])[0].state.is_cancelled(), 60, "the held run Cancelled")
            took = time.monotonic() - asked
            # The run process then ends as any cancelled run does (a Dask thread still
            # running a task holds the in-process cluster's close until the worker kills it).
            _wait_until(lambda: client.read_flow_run(ids["in-run"]).state.is_cancelled(), RUN_TIMEOUT, "the in-run flow run Cancelled")
            assert len(read_task_runs(client, ids["in-run"])) == 1

            def cancelled_line(messages):
                return [m for m in messages if "cancelled 1 task run(s)" in m and "held" in m]

            # The run's process sends its logs in batches (every 2 s by default), so the line
            # can reach the API after the run's Cancelled state: a bounded poll, then the check.
            with contextlib.suppress(Exception):
                _wait_until(lambda: cancelled_line(read_logs(client, ids["in-run"])), 30, "the cancelled line in the run's logs")
            messages = read_logs(client, ids["in-run"])
            assert took < 15, (took, messages)
            # cancelled by the shim's watch of the run's state, or on the worker's termination signal
            assert cancelled_line(messages), messages
            # the control: Completed before and after the Cancel, still waiting for its run
            assert client.read_flow_run(ids["at-exit"]).state.is_completed()
            at_exit = read_task_runs(client, ids["at-exit"])
            assert len(at_exit) == 1 and at_exit[0].state.is_running()
            (dirs["at-exit"] / "release").write_text("")
            _wait_until(lambda: read_task_runs(client, ids["at-exit"])[0].state.is_completed(), RUN_TIMEOUT, "the control's held run Completed")
    finally:
        for directory in dirs.values():
            if directory.exists():
                (directory / "release").write_text("")
        stop_group(worker)
        for directory in dirs.values():
            pid_file = directory / "flow.pid"
            if pid_file.exists() and pid_alive(int(pid_file.read_text())):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
