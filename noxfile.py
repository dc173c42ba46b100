"""Release matrix: every claim of the version table, shown on the real release.

    uvx nox -s matrix                 # every row: install report, finished-run check, seed flow
    uvx nox -s "matrix(3.3.7)"        # one row
    uvx nox -s matrix -- full         # every row, the whole real-runner suite (+ drain tests)
    uvx nox -s matrix -- ci           # what CI runs: Ray only on the rows marked for it
    uvx nox -s matrix -- -x -vv       # anything else after -- goes to pytest

Each row is installed as of its own era (``uv pip install --exclude-newer DATE``) into
.nox/matrix-<row>/ and reused on the next run.  One pytest session per row: one Prefect
server (with its own PREFECT_HOME), one Dask cluster, one Ray head.  A row states what
the stock release was seen to do; tests/test_release_row.py checks the shim's guard
table (prefect_future_anchor/releases.py) against it.

A new Prefect release is one more line in ROWS (and, if it is the newest, a bump of
``releases.TESTED``).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

import nox
import nox.command

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True

PYTHON = "3.11"


@dataclass(frozen=True)
class Row:
    name: str
    prefect: str
    dask: str
    ray: Optional[str]
    #: resolve every other dependency as of this day (the row's era)
    date: str
    #: runners whose stock seed flow logs "garbage collected before it resolved"
    warns: str = ""
    #: runners whose stock future warns even for a finished run (prefect-ray 0.4.4)
    warns_finished: str = ""
    #: stock DaskTaskRunner creates several clients when threads submit first at once (prefect-dask 0.3.4+)
    races: bool = False
    #: runners the tests exercise (default: every runner installed)
    run: Optional[str] = None
    #: runners ``-- ci`` exercises (default: ``run``); Ray costs about 2 minutes a row
    ci: Optional[str] = None
    #: the Python the row runs on (default: PYTHON)
    python: str = ""
    #: the newest releases: also the final-state tests (killed workers, cancelled runs, exits)
    newest: bool = False
    why: str = ""

    @property
    def runners(self) -> str:
        return self.run if self.run is not None else "dask" + (",ray" if self.ray else "")

    @property
    def ci_runners(self) -> str:
        return self.ci if self.ci is not None else self.runners

    @property
    def supported(self) -> bool:
        return int(self.prefect.split(".")[0]) >= 3


# fmt: off
ROWS = [
    Row("3.0.0",  "3.0.0",  "0.3.0",  "0.4.0", "2024-09-04", warns="dask,ray", run="dask", why="stock prefect-ray 0.4.0 crashes its Ray workers"),
    Row("3.1.2",  "3.1.2",  "0.3.2",  "0.4.2", "2024-11-16", warns="dask,ray", ci="dask"),
    Row("3.2.7",  "3.2.7",  "0.3.3",  "0.4.3", "2025-02-21", warns="dask,ray", ci="dask"),
    Row("3.3.7",  "3.3.7",  "0.3.5",  "0.4.4", "2025-04-29", warns="dask,ray", warns_finished="ray", races=True, ci="dask"),
    Row("3.4.6",  "3.4.6",  "0.3.5",  "0.4.4", "2025-06-12", warns="dask,ray", warns_finished="ray", races=True, ci="dask"),
    Row("3.4.7",  "3.4.7",  "0.3.6",  "0.4.5", "2025-06-28", races=True, ci="dask"),
    Row("3.9.1",  "3.9.1",  "0.3.7",  "0.6.0", "2026-10-31", races=True, newest=True),
    Row("2.20.0", "2.20.0", "0.2.10", "0.3.7", "2024-08-06"),
    # Python versions users run (PYTHON is the reference): the oldest Prefect 3 line on 3.9, the newest
    # the first release without the false warning on 3.10 (prefect 3.8.8, the newest for 3.10, resolved as of
    # 2026-10-31, crashes its own server: FastAPI's Body() no longer takes min_items), the newest release on 3.12
    # and 3.13 (prefect 3.9 needs >= 3.11).  Scope PYTHONS: seed flow, fire-and-forget,
    # switched on by install() and by PREFECT_FUTURE_ANCHOR=1 alone.
    Row("py3.9",  "3.4.6",  "0.3.5",  None,    "2025-06-12", warns="dask", races=True, python="3.9"),
    Row("py3.10", "3.4.7",  "0.3.6",  None,    "2025-06-28", races=True, python="3.10"),
    Row("py3.12", "3.9.1",  "0.3.7",  "0.6.0", "2026-10-31", races=True, python="3.12", ci="dask"),
    Row("py3.13", "3.9.1",  "0.3.7",  None,    "2026-10-31", races=True, python="3.13"),
]
# fmt: on

#: What an operator sees and controls at the end of a flow (issue 33), on every row: the drain's lines in the
#: flow run's logs, its end at timeout_seconds, the run Running while it waits and Cancel stopping it.
OPERATOR = [
    "tests/test_operator_real.py::test_the_drains_lines_are_in_the_flow_runs_logs",
    "tests/test_operator_real.py::test_a_subflows_drain_is_in_the_subflows_logs",
    "tests/test_operator_real.py::test_the_drain_ends_at_the_flows_timeout",
    "tests/test_operator_real.py::test_the_flow_run_is_running_while_the_drain_waits_and_cancel_stops_it",
]
QUICK = [
    *OPERATOR,
    "tests/test_release_row.py",
    "tests/test_anchoring_real.py::test_seed_flow_stock_warns_shim_does_not",
    "tests/test_anchoring_real.py::test_completion_fetches_no_result_into_the_driver",
    "tests/test_concurrent_start_real.py",
]
FULL = [*OPERATOR, "tests/test_release_row.py", "tests/test_anchoring_real.py", "tests/test_drain_real.py", "tests/test_concurrent_start_real.py", "tests/test_final_states_real.py"]
UNSUPPORTED = ["tests/test_unsupported_release.py"]
NEWEST = [
    "tests/test_final_states_real.py",
    "tests/test_context_once_real.py",
    "tests/test_payload_once_real.py",
    "tests/test_plain_walk_real.py",
    "tests/test_process_pool_real.py",
    "tests/test_exits_real.py",
    "tests/test_ray_watch_real.py",
    "tests/test_internals.py",
]
#: Topologies (a second Ray cluster of two nodes with the Ray Client server, a Dask scheduler with
#: three workers): ``-- full`` on the newest row, and ``./run faults``; not in CI's budget.
TOPOLOGY = ["tests/test_topology_real.py"]
PYTHONS = [
    "tests/test_operator_real.py::test_the_flow_run_is_running_while_the_drain_waits_and_cancel_stops_it",
    "tests/test_release_row.py",
    "tests/test_anchoring_real.py::test_seed_flow_stock_warns_shim_does_not",
    "tests/test_drain_real.py::test_fire_and_forget_completes_under_wait_and_stock_loses_some",
    "tests/test_activation.py::test_seed_flow_on_dask_switched_on_by_the_environment",
]
#: Rows whose prefect has its own ProcessPoolTaskRunner (3.4.14+): ``-- full`` runs all of its
#: tests, the PYTHONS rows these (the newest row runs them all with NEWEST).
PROCESS_POOL = ["tests/test_process_pool_real.py"]
PROCESS_POOL_PYTHONS = [
    "tests/test_process_pool_real.py::test_unkept_runs_follow_on_exit_and_a_failing_flow_cancels_them_at_once",
    "tests/test_process_pool_real.py::test_the_environment_switch_patches_the_process_pool_on_import",
]


def has_process_pool(row: "Row") -> bool:
    return tuple(int(part) for part in row.prefect.split(".")) >= (3, 4, 14)


def interpreter(version: str) -> str:
    """The interpreter for ``version``: uv finds PYTHON itself; others are looked up on
    this machine (pyenv's versions, then PATH) and must answer to ``--version``."""
    if not version or version == PYTHON:
        return PYTHON
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    candidates.append(shutil.which(f"python{version}") or "")
    for candidate in candidates:
        try:
            ok = subprocess.run([candidate, "--version"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if candidate and ok:
            return candidate
    return version  # nox reports it missing (error_on_missing_interpreters)


def install(session: nox.Session, *args: str) -> None:
    """``uv pip install`` from uv's cache alone when it holds everything (no index round
    trips: a row's environment is built in a few seconds), else from the index.  The
    resolution is the same either way: ``--exclude-newer`` fixes it."""
    try:
        session.install("--offline", *args, silent=True)
    except nox.command.CommandFailed:
        session.log("not all in uv's cache: installing from the index")
        session.install(*args)


@nox.session(venv_backend="uv", reuse_venv=True)
@nox.parametrize(("python", "row"), [(interpreter(row.python), row) for row in ROWS], ids=[row.name for row in ROWS])
def matrix(session: nox.Session, row: Row) -> None:
    """Install one row as of its date and run the release-matrix tests on it."""
    packages = [f"prefect=={row.prefect}", f"prefect-dask=={row.dask}"]
    if row.ray:
        packages.append(f"prefect-ray=={row.ray}")
    # the test dependency group of pyproject.toml, resolved as of the row's era like the rest
    install(session, f"--exclude-newer={row.date}", *packages, "--group", "test")
    install(session, "-e", ".")

    args = list(session.posargs)
    scope, runners = QUICK, row.runners
    if args[:1] == ["full"]:
        scope, args = FULL, args[1:]
    elif args[:1] == ["ci"]:
        runners, args = row.ci_runners, args[1:]
    if not row.supported:
        scope = UNSUPPORTED
    elif row.python:
        scope = PYTHONS
    full = scope is FULL
    if has_process_pool(row) and scope is PYTHONS:
        scope = scope + PROCESS_POOL_PYTHONS
    elif has_process_pool(row) and full:
        scope = scope + PROCESS_POOL
    if row.newest and full:
        scope = scope + [t for t in NEWEST + TOPOLOGY if t not in scope]
    if row.newest and scope is QUICK:
        scope = scope + NEWEST

    home = os.path.join(session.virtualenv.location, "prefect-home")
    os.makedirs(home, exist_ok=True)
    env = {
        "PREFECT_HOME": home,  # per row: a database migrated by one release breaks another
        "PREFECT_TELEMETRY_ENABLED": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PFA_RUNNERS": runners,
        "PFA_EXPECT_STOCK_WARNINGS": row.warns,
        "PFA_EXPECT_FINISHED_WARNINGS": row.warns_finished,
        "PFA_EXPECT_CLIENT_RACE": "1" if row.races else "0",
        # bytecode written as modules are first imported, whatever the caller set (see ./run)
        "PYTHONDONTWRITEBYTECODE": "",
    }
    if not row.supported:
        env["PFA_NO_SERVER"] = "1"
    if row.why:
        session.log(f"row {row.name}: {row.runners} only: {row.why}")
    session.run("python", "-m", "pytest", *scope, "-p", "no:cacheprovider", *args, env=env)
