"""On Prefect 2.x (the matrix's 2.20 row) the shim refuses clearly and touches nothing.

Prefect 2's runners are a different API (async ``submit(key, call)``, no
``PrefectWrappedFuture``); nothing here imports a Prefect 3 module.  Run with
``PFA_NO_SERVER=1``: no flow runs.  Skipped wherever prefect 3 is installed.
"""

from __future__ import annotations

import importlib
import logging

import pytest

import prefect_future_anchor
from prefect_future_anchor import guard, releases
RUNNER_MODULES = ("prefect_dask.task_runners", "prefect_ray.task_runners")

_PREFECT = releases.installed_version("prefect")

pytestmark = pytest.mark.skipif(
    _PREFECT is None or releases.parse_version(_PREFECT) >= releases.parse_version("3.0.0"),
    reason="needs a Prefect 2.x environment (release matrix row 2.20)",
)


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    # Importing prefect configures logging and replaces the root handlers that
    # caplog reads, so the runner modules are imported before the test body.
    for module_name in RUNNER_MODULES:
        importlib.import_module(module_name)
    monkeypatch.setattr(guard, "_warned", set())
    yield
    prefect_future_anchor.uninstall()


def stock_attributes():
    found = {}
    for module_name in RUNNER_MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module.__name__:
                found[(module.__name__, name)] = dict(vars(value))
    return found


def test_install_refuses_clearly_and_patches_nothing(caplog):
    before = stock_attributes()
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
    refusals = [r.getMessage() for r in caplog.records if "does not support" in r.getMessage()]
    assert len(refusals) == 1, refusals
    assert f"prefect {_PREFECT} (supported: prefect>=3.0.0)" in refusals[0]
    assert "upgrade to Prefect 3" in refusals[0]
    assert report.applied == []
    assert all(p.state == "skipped" and "unsupported release" in p.reason for p in report.patches)
    assert any(problem.startswith(f"prefect {_PREFECT}") for problem in report.problems)
    assert stock_attributes() == before


def test_strict_install_raises():
    with pytest.raises(prefect_future_anchor.UnsupportedReleaseError, match=f"prefect {_PREFECT}"):
        prefect_future_anchor.install(strict=True)
    assert not prefect_future_anchor.is_installed()
