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
from prefect_future_anchor import guard, lifecycle, registry, releases

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
        import prefect_dask, prefect_ray, prefect.flow_engine
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
    import prefect.flow_engine  # noqa: F401  (as the script did)

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
    for patch in registry.PATCHES:
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
    # the runner's other patches were written for the same structure: refused with it,
    # and no message says otherwise (issue 35, section 5)
    for name in ("dask.final-states", "dask.client-once"):
        assert report.patch(name).state == "skipped" and "dask.track" in report.patch(name).reason, str(report)
    assert "client" not in DaskTaskRunner.__dict__
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "not applying dask.track" in m]) == 1
    assert not [m for m in messages if "expected structure" in m or "untested" in m]
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


def test_status_tells_an_untested_release_apart(monkeypatch, caplog):
    """Issue 33, item 5: on releases newer than the tested ones (simulated: prefect
    3.10.0, prefect-dask 0.3.8) each applied patch says so in status, text and JSON;
    on the tested releases none does (the control)."""
    import prefect.flow_engine  # noqa: F401
    import prefect_dask  # noqa: F401

    monkeypatch.setitem(sys.modules, "prefect_ray.task_runners", None)
    tested = prefect_future_anchor.install()
    assert {p.untested for p in tested.patches} == {None}
    assert "untested" not in str(tested)
    prefect_future_anchor.uninstall()

    fake_versions(monkeypatch, prefect="3.10.0", prefect_dask="0.3.8")
    monkeypatch.setattr(guard, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
    dask_track = report.patch("dask.track")
    assert dask_track.state == "applied"
    assert dask_track.untested == "prefect 3.10.0, prefect-dask 0.3.8"
    assert report.patch("flow.drain-in-run").untested == "prefect 3.10.0"
    assert "applied (untested release prefect 3.10.0, prefect-dask 0.3.8)" in str(report)
    as_json = json.loads(report.to_json())
    assert {p["name"]: p["untested"] for p in as_json["patches"]}["dask.track"] == "prefect 3.10.0, prefect-dask 0.3.8"
    warnings = [r.getMessage() for r in caplog.records if "untested release" in r.getMessage()]
    assert warnings and all(w.count("prefect 3.10.0") == 1 for w in warnings), warnings


def test_disable_leaves_those_patches_stock_and_says_by_what(monkeypatch):
    """Issue 33, item 4: a patch, or a whole runner by its prefix, switched off by
    install(), by the environment, or both; a patch that needs a disabled one goes
    with it; the rest are applied as usual (the control)."""
    import prefect_dask  # noqa: F401
    import prefect_ray  # noqa: F401
    from prefect_dask import DaskTaskRunner
    from prefect_ray import RayTaskRunner

    before = originals()
    expected = expected_patches(releases.detect())
    monkeypatch.setenv(lifecycle.ENV_DISABLE, "ray")
    report = prefect_future_anchor.install(disable=["dask.track"])
    states = {p.name: (p.state, p.reason) for p in report.patches}
    assert states["dask.track"] == ("disabled", "disabled by install(disable=...)")
    assert states["dask.final-states"][0] == "disabled"
    assert "needs dask.track" in states["dask.final-states"][1]
    for name in [n for n in expected if n.startswith("ray.")]:
        assert states[name] == ("disabled", f"disabled by {lifecycle.ENV_DISABLE}")
    assert set(report.applied) == expected - {n for n in states if states[n][0] == "disabled"}
    assert DaskTaskRunner.__dict__["submit"] is before[("DaskTaskRunner", "submit")]
    assert RayTaskRunner.__dict__["submit"] is before[("RayTaskRunner", "submit")]
    assert report.disabled["dask.track"] == "disabled by install(disable=...)"

    # a later install() switches them back on
    monkeypatch.delenv(lifecycle.ENV_DISABLE)
    report = prefect_future_anchor.install()
    assert set(report.applied) == expected
    assert DaskTaskRunner.__dict__["submit"] is not before[("DaskTaskRunner", "submit")]
    # and off again, removing them exactly
    report = prefect_future_anchor.install(disable="dask")
    assert DaskTaskRunner.__dict__["submit"] is before[("DaskTaskRunner", "submit")]
    assert {p.name for p in report.patches if p.state == "disabled"} == {n for n in expected if n.startswith("dask.")}


def test_an_unknown_patch_name_is_a_clear_error_in_code_and_reported_once_from_the_environment(monkeypatch, caplog):
    with pytest.raises(ValueError, match=r"unknown patch name\(s\) 'dask.trak'.*valid names: .*dask.track.*ray"):
        prefect_future_anchor.install(disable=["dask.trak"])
    assert not prefect_future_anchor.is_installed()
    monkeypatch.setenv(lifecycle.ENV_DISABLE, "dask.final-states, nonsense")
    monkeypatch.setattr(guard, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        report = prefect_future_anchor.install()
        prefect_future_anchor.install()
    ignored = [r.getMessage() for r in caplog.records if "nonsense" in r.getMessage()]
    assert len(ignored) == 1 and lifecycle.ENV_DISABLE in ignored[0] and "valid names" in ignored[0]
    assert report.disabled == {"dask.final-states": f"disabled by {lifecycle.ENV_DISABLE}"}


def test_uninstall_keeps_a_wrapper_another_library_put_on_top(monkeypatch, caplog):
    """Issue 35, section 2: uninstall() puts back only what is still the shim's; a
    wrapper put on ``submit`` after install() survives, once reported."""
    import wrapt
    from prefect_dask import DaskTaskRunner

    before = originals()
    prefect_future_anchor.install()
    calls = []

    def theirs(wrapped, instance, args, kwargs):
        calls.append(1)
        return wrapped(*args, **kwargs)

    wrapt.wrap_function_wrapper(DaskTaskRunner, "submit", theirs)
    on_top = DaskTaskRunner.__dict__["submit"]
    monkeypatch.setattr(guard, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="prefect_future_anchor"):
        prefect_future_anchor.uninstall()
    assert DaskTaskRunner.__dict__["submit"] is on_top
    assert DaskTaskRunner.__dict__["__exit__"] is before[("DaskTaskRunner", "__exit__")]
    kept = [r.getMessage() for r in caplog.records if "left DaskTaskRunner.submit in place" in r.getMessage()]
    assert len(kept) == 1
    DaskTaskRunner.submit = before[("DaskTaskRunner", "submit")]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"on_exit": "later"}, "on_exit='later' is not one of"),
        ({"drain_timeout": -1}, "drain_timeout=-1 is not a positive number"),
        ({"drain_timeout": "soon"}, "drain_timeout='soon'"),
        ({"disable": ["dask.trak"]}, "unknown patch name"),
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
    assert [p["name"] for p in data["patches"]] == list(registry.PATCH_NAMES)
