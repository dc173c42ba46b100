"""The built wheel, installed (not editable) into a fresh environment, runs the seed flow clean.

A virtual environment with the reference releases (Dask only) is kept under
``.venvs/`` keyed by the Python version and the pins, and reused between runs;
the wheel is built from this checkout every session and reinstalled into it
whenever its bytes differ from the installed one.  The flow script (the seed
script of test_activation) never imports the shim; it runs from a directory
without the package and puts only ``tests/`` on its path (for ``flows``, which
never imports the shim either): only the wheel's start-up hook can switch it
on, and the test checks that the shim was loaded from the wheel's site-packages.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, stock_warns
from prefect_future_anchor import autostart
from test_activation import HOOK_PROBE, environment, pep829_site, run_seed_script

PINS = ("--exclude-newer", "2025-06-15", "prefect==3.3.7", "prefect-dask==0.3.5")



def _uv() -> str:
    uv = shutil.which("uv") or str(ROOT / ".venvs" / "tools" / "bin" / "uv")
    assert os.path.exists(uv), "uv is needed to build the wheel and the environment (./run puts it on PATH)"
    return uv


def _run(*command: str, timeout: float = 600) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory):
    """(python, purelib) of the cached environment with this checkout's wheel installed."""
    uv = _uv()
    dist = tmp_path_factory.mktemp("dist")
    _run(uv, "build", "--wheel", "--out-dir", str(dist), str(ROOT))
    (wheel,) = dist.glob("prefect_future_anchor-*-py3-none-any.whl")
    wheel_hash = hashlib.sha256(wheel.read_bytes()).hexdigest()

    key = hashlib.sha256(repr((sys.version_info[:3], PINS)).encode()).hexdigest()[:12]
    venv = ROOT / ".venvs" / f"wheel-real-{key}"
    python = venv / "bin" / "python"
    (ROOT / ".venvs").mkdir(exist_ok=True)
    with open(ROOT / ".venvs" / "wheel-real.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be setting it up
        ready, installed = venv / ".pfa-ready", venv / ".pfa-wheel-sha256"
        if not ready.exists():
            shutil.rmtree(venv, ignore_errors=True)
            _run(uv, "venv", "-q", "-p", sys.executable, str(venv))
            _run(uv, "pip", "install", "-q", "-p", str(python), *PINS)
            ready.write_text(" ".join(PINS))
        if not installed.exists() or installed.read_text() != wheel_hash:
            installed.unlink(missing_ok=True)
            # the wheel's version does not change with its content: reinstall it by name
            _run(
                uv, "pip", "install", "-q", "-p", str(python), "--reinstall-package", "prefect-future-anchor",
                str(wheel), *PINS,
            )
            installed.write_text(wheel_hash)
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    direct_url = json.loads(
        next(Path(purelib).glob("prefect_future_anchor-*.dist-info")).joinpath("direct_url.json").read_text()
    )
    assert not direct_url.get("dir_info", {}).get("editable"), "the wheel must be installed, not editable"
    for name in (autostart.PTH_NAME, autostart.START_NAME, autostart.ENTRY_MODULE + ".py"):
        assert (Path(purelib) / name).exists(), name
    return str(python), purelib


def test_installed_wheel_runs_the_seed_flow_clean(tmp_path, wheel_env):
    python, purelib = wheel_env
    # The seed flow of test_activation (no import of the shim), on an in-process Dask cluster
    # of the wheel's environment.  PREFECT_API_URL (conftest's server) and PREFECT_HOME come
    # through environment().
    assert os.environ.get("PREFECT_API_URL"), "the test session's Prefect server is not running"

    shimmed = run_seed_script(tmp_path, "local", "", environment(PREFECT_FUTURE_ANCHOR="1"), python=python, timeout=300)
    assert shimmed["result"] == [84] * 10
    assert shimmed["warnings"] == 0, shimmed
    assert shimmed["installed"] and shimmed["hook"] == "pth", shimmed
    assert "dask.track" in shimmed["applied"], shimmed
    assert shimmed["shim_file"].startswith(purelib + os.sep), shimmed  # the wheel, not this checkout

    stock = run_seed_script(tmp_path, "local", "", environment(), python=python, timeout=300)
    assert stock["result"] == [84] * 10
    assert not stock["installed"] and stock["hook"] is None and stock["shim_file"] is None, stock
    if stock_warns("dask"):
        assert stock["warnings"] >= 1, "stock runner did not warn: this environment does not show the bug"


def test_installed_wheel_under_python_3_15_processing(wheel_env):
    """PEP 829's processing of the wheel's site-packages (emulated, see test_activation):
    the .pth's import line is skipped for the .start file, whose entry point alone starts
    the hook; a switched-off interpreter gets no hook."""
    python, purelib = wheel_env
    probe = HOOK_PROBE.replace(
        "print(json.dumps({", "print(json.dumps({'entry': %r in sys.modules, " % autostart.ENTRY_MODULE
    )
    done, proc = pep829_site(purelib, "pep829", probe, environment(PREFECT_FUTURE_ANCHOR="1"), python, ROOT.parent)
    assert proc.stderr == "", proc.stderr
    assert autostart.PTH_NAME in done["import_lines_skipped"]
    assert done["entry_points_called"] == [autostart.ENTRY_POINT]
    assert json.loads(proc.stdout.splitlines()[-1]) == {"entry": True, "hook": "pth", "heavy": []}
    done, proc = pep829_site(purelib, "pep829", probe, environment(), python, ROOT.parent)
    assert proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"entry": True, "hook": None, "heavy": []}
