"""install() / uninstall() / status(): idempotent, exact, thread-safe, guarded."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import types

import pytest

import prefect_future_anchor
from conftest import expected_patches
from prefect_future_anchor import guard, lifecycle, releases

HEAVY = ("prefect", "prefect_dask", "prefect_ray", "dask", "distributed", "ray")


def originals():
    """Every attribute a patch may replace, as the classes hold them now."""
    found = {}
    for module_name, runner_name, future_name in (
        ("prefect_dask.task_runners", "DaskTaskRunner", "PrefectDaskFuture"),
        ("prefect_ray.task_runners", "RayTaskRunner", "PrefectRayFuture"),
    ):
        try:
            module = __import__(module_name, fromlist=["_"])
        except ImportError:
            continue
        runner = getattr(module, runner_name)
        future = getattr(module, future_name)
        for owner, attribute in (
            (runner, "submit"),
            (runner, "__exit__"),
            (runner, "client"),
            (future, "wrapped_future"),
            (future, "__del__"),
        ):
            found[(owner.__name__, attribute)] = owner.__dict__.get(attribute, "<absent>")
    return found


@pytest.fixture(autouse=True)
def clean():
    prefect_future_anchor.uninstall()
    yield
    prefect_future_anchor.uninstall()


def test_install_imports_nothing_heavy_and_patches_on_import():
    script = textwrap.dedent(
        """
        import sys
        import prefect_future_anchor
        report = prefect_future_anchor.install()
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in %r)
        print("HEAVY", heavy)
        print("STATES", sorted({p.state for p in report.patches}))
        import prefect_dask, prefect_ray
        from prefect_dask import DaskTaskRunner
        print("APPLIED", prefect_future_anchor.status().applied)
        print("WRAPPED", type(DaskTaskRunner.__dict__["submit"]).__name__)
        """
        % (HEAVY,)
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    assert lines["HEAVY"] == "[]"
    expected = expected_patches(releases.detect())
    if expected:
        assert "pending" in lines["STATES"]
    assert sorted(eval(lines["APPLIED"])) == sorted(expected)
    assert lines["WRAPPED"] == ("FunctionWrapper" if "dask.track" in expected else "function")


def test_report_matches_release_table():
    import prefect_dask  # noqa: F401
    import prefect_ray  # noqa: F401

    versions = releases.detect()
    report = prefect_future_anchor.install()
    assert report.installed
    assert report.versions == versions
    expected = expected_patches(versions)
    for patch in releases.PATCHES:
        status = report.patch(patch.name)
        assert status.state == ("applied" if patch.name in expected else "skipped"), status
    assert json.loads(report.to_json())["patches"][0]["state"] == report.patches[0].state
    assert all(f"{status.name}  " in str(report) for status in report.patches)


def test_uninstall_restores_exact_originals_and_is_idempotent():
    import prefect_dask  # noqa: F401
    import prefect_ray  # noqa: F401

    before = originals()
    first = prefect_future_anchor.install()
    second = prefect_future_anchor.install()
    assert first.applied == second.applied
    assert originals() != before or not first.applied
    prefect_future_anchor.uninstall()
    prefect_future_anchor.uninstall()
    assert originals() == before
    from prefect_dask import DaskTaskRunner

    assert DaskTaskRunner.submit is before[("DaskTaskRunner", "submit")]
    assert not prefect_future_anchor.is_installed()


def test_install_uninstall_race_leaves_originals():
    import prefect_dask  # noqa: F401
    import prefect_ray  # noqa: F401

    before = originals()
    errors = []
    start = threading.Barrier(8)

    def toggle(n):
        try:
            start.wait()
            for i in range(50):
                (prefect_future_anchor.install if (i + n) % 2 else prefect_future_anchor.uninstall)()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=toggle, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    prefect_future_anchor.uninstall()
    assert originals() == before
    prefect_future_anchor.install()
    assert set(prefect_future_anchor.status().applied) == expected_patches(releases.detect())


def fake_versions(monkeypatch, **versions):
    table = {"prefect": None, "prefect-dask": None, "prefect-ray": None}
    table.update({k.replace("_", "-"): v for k, v in versions.items()})
    monkeypatch.setattr(releases, "detect", lambda: dict(table))


def test_prefect_2_is_refused_clearly(monkeypatch, caplog):
    fake_versions(monkeypatch, prefect="2.20.17", prefect_dask="0.2.10", prefect_ray="0.3.7")
    monkeypatch.setattr(guard, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
    assert report.applied == []
    refusals = [r.getMessage() for r in caplog.records if "does not support" in r.getMessage()]
    assert len(refusals) == 1
    assert "prefect 2.20.17" in refusals[0] and "prefect>=3.0.0" in refusals[0]
    assert all(p.state == "skipped" for p in report.patches)
    prefect_future_anchor.uninstall()
    with pytest.raises(prefect_future_anchor.UnsupportedReleaseError, match="prefect 2.20.17"):
        prefect_future_anchor.install(strict=True)
    assert not prefect_future_anchor.is_installed()


def test_unrecognised_structure_is_skipped_with_one_warning(monkeypatch, caplog):
    import prefect_dask.task_runners as real

    fake_versions(monkeypatch, prefect="3.3.7", prefect_dask="0.3.5")
    monkeypatch.setattr(guard, "_warned", set())
    module = types.ModuleType("prefect_dask.task_runners")

    class DaskTaskRunner(real.DaskTaskRunner):
        """A future release whose submit takes its arguments some other way."""

        def submit(self, task, parameters=None, *, wait_for=None):
            return super().submit(task, parameters, wait_for)

    module.DaskTaskRunner = DaskTaskRunner
    module.PrefectDaskFuture = real.PrefectDaskFuture
    monkeypatch.setitem(sys.modules, "prefect_dask.task_runners", module)
    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", None)
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
    status = report.patch("dask.track")
    assert status.state == "skipped" and "unrecognised runner structure" in status.reason
    assert "unexpected signature" in status.reason
    assert report.patch("dask.client-once").state == "applied"
    assert len([r for r in caplog.records if "not applying dask.track" in r.getMessage()]) == 1
    prefect_future_anchor.uninstall()
    assert "submit" in DaskTaskRunner.__dict__ and not hasattr(DaskTaskRunner.__dict__["submit"], "__wrapped__")
    with pytest.raises(prefect_future_anchor.UnsupportedReleaseError, match="unexpected signature"):
        prefect_future_anchor.install(strict=True)


def test_a_patch_that_fails_to_apply_is_logged_once_and_left_stock(monkeypatch, caplog):
    """The shim's own failure while patching: install() still returns, that patch is
    reported skipped with the reason, the runner keeps the stock attribute, one log line."""
    from prefect_dask.task_runners import DaskTaskRunner

    from prefect_future_anchor import dask_runner

    before = originals()

    def broken(original):
        raise RuntimeError("simulated failure inside the shim")

    monkeypatch.setattr(dask_runner, "created_once", broken)
    monkeypatch.setattr(guard, "_reported", set())
    with caplog.at_level(logging.ERROR, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
        prefect_future_anchor.uninstall()
        report_again = prefect_future_anchor.install()
    status = report.patch("dask.client-once")
    assert status.state == "skipped" and "simulated failure" in status.reason, str(report)
    assert report_again.patch("dask.client-once").state == "skipped"
    assert report.patch("dask.track").state == "applied"
    assert DaskTaskRunner.__dict__["client"] is before[("DaskTaskRunner", "client")]
    errors = [r for r in caplog.records if "internal error in install dask.client-once" in r.getMessage()]
    assert len(errors) == 1
    prefect_future_anchor.uninstall()
    assert originals() == before


def test_newer_release_than_tested_says_untested_once(monkeypatch, caplog):
    import prefect_dask  # noqa: F401

    fake_versions(monkeypatch, prefect="3.3.7", prefect_dask="0.3.99")
    monkeypatch.setattr(guard, "_warned", set())
    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", None)
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
        prefect_future_anchor.uninstall()
        prefect_future_anchor.install()
    assert report.patch("dask.track").state == "applied"
    assert len([r for r in caplog.records if "untested release" in r.getMessage()]) == 1


@pytest.mark.parametrize(
    "options, message",
    [
        ({"on_exit": "later"}, "on_exit='later' is not one of"),
        ({"drain_timeout": -1}, "drain_timeout=-1 is not a positive number"),
        ({"drain_timeout": "soon"}, "drain_timeout='soon'"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        prefect_future_anchor.install(**options)
    assert not prefect_future_anchor.is_installed()


def test_unknown_option_is_a_clear_error():
    with pytest.raises(TypeError, match="on_exti"):
        prefect_future_anchor.install(on_exti="wait")


def test_bad_environment_values_warn_and_use_defaults(monkeypatch, caplog):
    monkeypatch.setenv(lifecycle.ENV_ON_EXIT, "sometimes")
    monkeypatch.setenv(lifecycle.ENV_DRAIN_TIMEOUT, "0")
    monkeypatch.setattr(guard, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
    assert report.on_exit == "wait" and report.drain_timeout == 3600
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "PREFECT_FUTURE_ANCHOR_ON_EXIT" in messages and "sometimes" in messages
    assert "PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT" in messages


def test_environment_options_are_used(monkeypatch):
    monkeypatch.setenv(lifecycle.ENV_ON_EXIT, "cancel")
    monkeypatch.setenv(lifecycle.ENV_DRAIN_TIMEOUT, "12.5")
    report = prefect_future_anchor.install()
    assert (report.on_exit, report.drain_timeout) == ("cancel", 12.5)
    report = prefect_future_anchor.install(on_exit="ignore")
    assert report.on_exit == "ignore"


def test_status_before_install_says_what_would_apply():
    report = prefect_future_anchor.status()
    assert not report.installed
    assert {p.state for p in report.patches} == {"off"}
    wanted = expected_patches(releases.detect())
    assert {p.name for p in report.patches if p.reason.startswith("would apply")} == wanted


def test_cli_status_json():
    out = subprocess.run(
        [sys.executable, "-m", "prefect_future_anchor.cli", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["versions"] == releases.detect()
    assert [p["name"] for p in data["patches"]] == list(releases.PATCH_NAMES)
