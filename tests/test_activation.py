"""Issue 5, zero-code activation: ``PREFECT_FUTURE_ANCHOR=1`` and ``prefect-future-anchor run``.

Every test starts real interpreters.  The flow scripts never import the shim:
whatever they learn about it they read from ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from conftest import GC_WARNING, ROOT, stock_warns
from prefect_future_anchor import autostart

PYTHON = sys.executable
HEAVY = (
    "prefect",
    "prefect_dask",
    "prefect_ray",
    "dask",
    "distributed",
    "ray",
    "wrapt",
    "prefect_future_anchor",
)
SWITCHES = ("PREFECT_FUTURE_ANCHOR", "PREFECT_FUTURE_ANCHOR_ON_EXIT", "PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT")

#: What a start-up hook left in this interpreter, read without importing the shim.
HOOK_PROBE = (
    "import json, sys; "
    "hooks = [getattr(f, 'prefect_future_anchor_hook', None) "
    "for f in sys.meta_path if getattr(f, 'triggers', ())]; "
    "print(json.dumps({'hook': next((h for h in hooks if h), None), "
    "'heavy': sorted(m for m in sys.modules if m.split('.')[0] in %r)}))" % (HEAVY,)
)

SEED_SCRIPT = '''\
"""The seed flow of upstream issue 17517, with no import of prefect_future_anchor."""
import gc, json, logging, sys

tests, kind, address = sys.argv[1:4]
sys.path.insert(0, tests)
from flows import run_seed  # imports prefect, which configures its logging


class Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record):
        if {warning!r} in record.getMessage():
            self.count += 1


handler = Count()
logging.getLogger("prefect").addHandler(handler)
if kind == "dask":
    from prefect_dask import DaskTaskRunner
    runner = DaskTaskRunner(address=address)
elif kind == "local":  # an in-process cluster of this interpreter's own environment
    from prefect_dask import DaskTaskRunner
    runner = DaskTaskRunner(
        cluster_kwargs={{"n_workers": 1, "threads_per_worker": 2, "processes": False, "dashboard_address": None}}
    )
else:
    from prefect_ray import RayTaskRunner
    runner = RayTaskRunner(address=address)
result = run_seed(runner)
shim = sys.modules.get("prefect_future_anchor")
if shim is not None:
    assert shim.wait_released(60), "anchors were not released"
gc.collect()
print("RESULT " + json.dumps({{
    "result": result,
    "warnings": handler.count,
    "installed": bool(shim and shim.is_installed()),
    "applied": shim.status().applied if shim else [],
    "hook": getattr(sys.modules.get("prefect_future_anchor.autostart"), "activated_by", None),
    "shim_file": getattr(shim, "__file__", None),
}}))
'''.format(warning=GC_WARNING)


def environment(**values: str) -> dict:
    """This process's environment without the switches and PYTHONPATH, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES and k != "PYTHONPATH"}
    env.update(values)
    return env


def python(code: str, env: dict, *args: str, cwd=None) -> subprocess.CompletedProcess:
    """``python -c code`` (from a directory without the source tree, unless ``cwd``)."""
    return subprocess.run(
        [PYTHON, *args, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd or ROOT / "tests",
    )


def cli() -> list:
    script = Path(PYTHON).with_name("prefect-future-anchor")
    return [str(script)] if script.exists() else [PYTHON, "-m", "prefect_future_anchor.cli"]


def last_json(proc: subprocess.CompletedProcess, prefix: str = "") -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [
        line[len(prefix) :]
        for line in proc.stdout.splitlines()
        if line.startswith(prefix) and line[len(prefix) :]
    ]
    assert lines, f"no {prefix or 'JSON'} line in:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1])


def run_flow_script(command: list, env: dict, cwd: Path, timeout: float = 480) -> dict:
    """Run a flow script in its own session; on timeout its whole group (Dask
    workers included) is killed, so nothing outlives the test."""
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{command} did not finish within {timeout}s\n{err[-4000:]}")
    return last_json(subprocess.CompletedProcess(command, proc.returncode, out, err), "RESULT ")


def run_seed_script(
    tmp_path: Path, kind: str, address: str, env: dict, command_prefix=(), python: str = PYTHON, timeout: float = 480
) -> dict:
    """The seed flow in a fresh interpreter (``kind``: "dask" or "ray" on the session's
    cluster at ``address``, "local" on an in-process Dask cluster of ``python``'s own)."""
    script = tmp_path / "seed_flow.py"
    script.write_text(SEED_SCRIPT)
    assert not re.search(r"^\s*(import|from)\s+prefect_future_anchor", SEED_SCRIPT, re.M)
    return run_flow_script(
        [*command_prefix, python, str(script), str(ROOT / "tests"), kind, address], env, tmp_path, timeout
    )


# -- the .pth hook --------------------------------------------------------------------------


#: The generated start-up files: source file -> the name it is installed under in site-packages.
INSTALLED_AS = {
    "autostart.pth": autostart.PTH_NAME,
    "autostart.start": autostart.START_NAME,
    "autostart_entry.py": autostart.ENTRY_MODULE + ".py",
}


@pytest.mark.parametrize("source", sorted(INSTALLED_AS))
def test_shipped_hook_files_are_generated_from_start(source):
    """The .pth line is start()'s own code, the .start file names the entry module's
    run(), which runs that same line; the installed copies are the shipped ones."""
    assert set(INSTALLED_AS) == set(autostart.GENERATED)
    shipped = (ROOT / "prefect_future_anchor" / source).read_text()
    assert shipped == autostart.GENERATED[source](), "regenerate: python -m prefect_future_anchor.autostart"
    installed = Path(sysconfig.get_paths()["purelib"]) / INSTALLED_AS[source]
    assert installed.read_text() == shipped, f"reinstall the project: {installed} is stale"


def test_start_file_matches_the_pth_and_names_the_entry_module():
    """PEP 829: a .start file disables the import lines of the .pth with the same name
    in the same directory; its entry points have the strict ``module:callable`` form."""
    assert autostart.PTH_NAME[: -len(".pth")] == autostart.START_NAME[: -len(".start")]
    entries = [
        line.strip()
        for line in autostart.start_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert entries == [autostart.ENTRY_POINT]
    assert re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", entries[0])
    # a top-level module: naming anything inside the package would import the whole package
    # (wrapt, importlib.metadata) into every interpreter, switched on or not
    assert "." not in autostart.ENTRY_MODULE
    namespace = {}
    exec(autostart.entry_module_text(), namespace)
    assert namespace["LINE"] == autostart.pth_line()
    assert [line for line in autostart.pth_text().splitlines() if not line.startswith("#")] == [
        autostart.pth_line()
    ]


def _loaded_names(code) -> set:
    """Every name the code object (and those nested in it) reads from its namespaces."""
    import dis

    names = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("LOAD_NAME", "LOAD_GLOBAL", "LOAD_DEREF", "LOAD_CLASSDEREF"):
            names.add(instruction.argval)
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _loaded_names(const)
    return names


def test_pth_line_uses_nothing_of_site():
    """The import line reads no name of site.py's (``sitedir``, the function's locals: Python
    3.15 runs import lines from another function than 3.14, which broke lines that did), only
    builtins and what it imports; and it runs the hook in a namespace of its own, leaving
    nothing in the namespace that runs it."""
    line = autostart.pth_line()
    code = compile(line, "<pth line>", "exec")
    assert _loaded_names(code) <= {"os", "sys", "exec", "any", "getattr", "f", ".0"}, _loaded_names(code)
    run_in_a_bare_namespace = (
        "import json, sys\n"
        "def runner():\n"
        "    namespace = {}\n"
        "    exec(%r, namespace)\n"
        "    return sorted(k for k in namespace if k != '__builtins__')\n"
        "left = runner()\n" % line + HOOK_PROBE.replace("print(json.dumps({", "print(json.dumps({'left': left, ")
    )
    # -S: no site, no .pth processed; the line alone, in a function that has no sitedir
    proc = python(run_in_a_bare_namespace, environment(PREFECT_FUTURE_ANCHOR="1"), "-S")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert json.loads(proc.stdout) == {"left": ["os", "sys"], "hook": "pth", "heavy": []}


#: Python 3.15's processing of one site-packages directory (PEP 829, as Lib/site.py implements
#: it: addsitedir() reads every .pth then every .start, sorted; flush_pth_start() extends
#: sys.path, execs the import lines of each .pth that has no .start of the same name, then
#: resolves and calls each entry point), in an interpreter started with -S.  argv: site-packages
#: directory, mode, probe.  Modes: "pep829" as above; "both" (an interpreter that reads both
#: files: every import line, then every entry point); "start-first" (entry points, then every
#: import line).
PEP829_SITE = r'''
import json, os, pkgutil, re, sys

sitedir, mode, probe = sys.argv[1:4]
sys.path.append(sitedir)
names = sorted(n for n in os.listdir(sitedir) if not n.startswith("."))
import_lines, entry_points = {}, {}


def lines(name):
    with open(os.path.join(sitedir, name), encoding="utf-8-sig") as file:
        return [l.strip() for l in file.read().splitlines() if l.strip() and not l.strip().startswith("#")]


for name in (n for n in names if n.endswith(".pth")):
    for line in lines(name):
        if line.startswith(("import ", "import\t")):
            import_lines.setdefault(name, []).append(line)
        else:
            path = os.path.abspath(os.path.join(sitedir, line))
            if os.path.exists(path) and path not in sys.path:
                sys.path.append(path)
for name in (n for n in names if n.endswith(".start")):
    entry_points[name] = lines(name)  # present, even empty: it disables the .pth's import lines
done = {"import_lines_run": [], "import_lines_skipped": [], "entry_points_called": []}


def exec_imports():
    for name, found in import_lines.items():
        if mode == "pep829" and name[: -len(".pth")] + ".start" in entry_points:
            done["import_lines_skipped"].append(name)
            continue
        for line in found:
            exec(line)  # in this function's namespace, as site does
        done["import_lines_run"].append(name)


def call_entry_points():
    for name, found in entry_points.items():
        for entry in found:
            # pkgutil.resolve_name(strict=True) of 3.15: module:callable, callable required
            assert re.fullmatch(r"\w+(\.\w+)*:\w+(\.\w+)*", entry), entry
            pkgutil.resolve_name(entry)()
            done["entry_points_called"].append(entry)


steps = [call_entry_points, exec_imports] if mode == "start-first" else [exec_imports, call_entry_points]
for step in steps:
    step()
print("SITE " + json.dumps(done))
exec(probe)
'''

#: After the start-up hooks: how many finders of ours wait, and how many times install()
#: runs (a profile hook counts its calls while the first trigger import activates the
#: shim; then a wrapper counts them while a second trigger, prefect_dask, is imported).
ONCE_PROBE = """
import json, os, sys
def finders():
    return sum(1 for f in sys.meta_path if getattr(f, "prefect_future_anchor_hook", None))
before = finders()
installs = []
LIFECYCLE = os.path.join("prefect_future_anchor", "lifecycle.py")
def profile(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "install" and frame.f_code.co_filename.endswith(LIFECYCLE):
        installs.append("activation")
sys.setprofile(profile)
import prefect_future_anchor.autostart as autostart  # the first trigger
sys.setprofile(None)
from prefect_future_anchor import lifecycle
original = lifecycle.install
def counting(*args, **kwargs):
    installs.append("second trigger")
    return original(*args, **kwargs)
lifecycle.install = counting
import prefect_dask  # a second finder would run install() again here
lifecycle.install = original
print("ONCE " + json.dumps({
    "finders_before": before,
    "finders_after": finders(),
    "activation": autostart.activation,
    "hook": autostart.activated_by,
    "installs": installs,
    "applied": sys.modules["prefect_future_anchor"].status().applied,
    "entry_module_loaded": "_prefect_future_anchor_autostart" in sys.modules,
}))
"""


def pep829_site(sitedir, mode: str, probe: str, env: dict, python_exe: str = PYTHON, cwd=None):
    """Run :data:`PEP829_SITE` over ``sitedir`` with ``python -S``; returns (site report, proc)."""
    proc = subprocess.run(
        [python_exe, "-S", "-c", PEP829_SITE, str(sitedir), mode, probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or ROOT / "tests",
    )
    return last_json(proc, "SITE "), proc


def test_start_entry_point_alone_activates_as_python_3_15_would():
    """Python 3.15's processing of this environment's site-packages: the .pth's import line is
    skipped for the .start file, whose entry point alone starts the hook, importing nothing."""
    purelib = sysconfig.get_paths()["purelib"]
    probe = HOOK_PROBE.replace("print(json.dumps({", "print(json.dumps({'entry': '%s' in sys.modules, " % (
        autostart.ENTRY_MODULE
    ))
    done, proc = pep829_site(purelib, "pep829", probe, environment(PREFECT_FUTURE_ANCHOR="1"))
    assert proc.stderr == "", proc.stderr
    assert autostart.PTH_NAME in done["import_lines_skipped"]
    assert autostart.PTH_NAME not in done["import_lines_run"]
    assert autostart.ENTRY_POINT in done["entry_points_called"]
    assert last_json(proc) == {"entry": True, "hook": "pth", "heavy": []}
    off, proc = pep829_site(purelib, "pep829", probe, environment())
    assert proc.stderr == "" and autostart.ENTRY_POINT in off["entry_points_called"]
    assert last_json(proc) == {"entry": True, "hook": None, "heavy": []}
    code = "import prefect_future_anchor.lifecycle as l, prefect_future_anchor.autostart as a; print(l.is_installed(), a.activated_by)"
    for env, expected in ((environment(PREFECT_FUTURE_ANCHOR="1"), "True pth"), (environment(), "False None")):
        done, proc = pep829_site(purelib, "pep829", code, env)
        assert proc.stderr == "" and proc.stdout.splitlines()[-1] == expected, proc.stdout + proc.stderr


@pytest.mark.parametrize("order", ["site-then-start", "pth-then-start", "start-then-pth"])
def test_pth_and_start_in_one_interpreter_activate_once(order):
    """An interpreter that runs both hooks (in either order) puts one finder on sys.meta_path
    and runs install() once: the second hook stops at the sys.meta_path scan."""
    env = environment(PREFECT_FUTURE_ANCHOR="1")
    if order == "site-then-start":  # this Python's own site runs the .pth; then the .start's entry point
        with open(Path(sysconfig.get_paths()["purelib"]) / autostart.START_NAME) as file:
            (entry,) = [l.strip() for l in file if l.strip() and not l.startswith("#")]
        code = "import pkgutil; pkgutil.resolve_name(%r)()\n%s" % (entry, ONCE_PROBE)
        proc = python(code, env)
    else:
        mode = "both" if order == "pth-then-start" else "start-first"
        done, proc = pep829_site(sysconfig.get_paths()["purelib"], mode, ONCE_PROBE, env)
        assert autostart.PTH_NAME in done["import_lines_run"]
        assert autostart.ENTRY_POINT in done["entry_points_called"]
    assert proc.stderr == "", proc.stderr[-4000:]
    once = last_json(proc, "ONCE ")
    assert once["installs"] == ["activation"], once
    assert once["finders_before"] == 1 and once["finders_after"] == 0, once
    assert once["activation"] == "installed" and once["hook"] == "pth", once
    assert once["entry_module_loaded"] and "dask.track" in once["applied"], once


@pytest.mark.parametrize("value", ["yes", "2"])
def test_bad_value_warns_once_with_both_hooks(value):
    """Both hooks, one interpreter, an unrecognised value: one line on stderr, not two."""
    code = "import prefect_future_anchor as p; print('alive', p.is_installed())"
    done, proc = pep829_site(
        sysconfig.get_paths()["purelib"], "both", code, environment(PREFECT_FUTURE_ANCHOR=value)
    )
    assert autostart.ENTRY_POINT in done["entry_points_called"]
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "alive False"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and f"ignoring PREFECT_FUTURE_ANCHOR={value!r}" in lines[0], proc.stderr


def test_startup_with_switch_on_imports_nothing(tmp_path):
    """-X importtime and sys.modules: the switch adds no module at all to start-up."""
    on, off = environment(PREFECT_FUTURE_ANCHOR="1"), environment()
    timed = python("pass", on, "-X", "importtime")
    assert timed.returncode == 0, timed.stderr
    imported = [
        line.split("|")[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")
    ]
    assert imported, timed.stderr
    assert not [m for m in imported if m.split(".")[0] in HEAVY], imported
    listing = "import sys, json; print(json.dumps(sorted(sys.modules)))"
    with_switch, without = last_json(python(listing, on)), last_json(python(listing, off))
    assert set(with_switch) == set(without)
    probe = last_json(python(HOOK_PROBE, on))
    assert probe == {"hook": "pth", "heavy": []}


@pytest.mark.parametrize("value", ["1", "true", "on", "TRUE", " On "])
def test_on_values_activate_when_the_program_imports_the_shim(value):
    code = (
        "import prefect_future_anchor.lifecycle as l, prefect_future_anchor.autostart as a; "
        "print(l.is_installed(), a.activated_by)"
    )
    proc = python(code, environment(PREFECT_FUTURE_ANCHOR=value))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.split() == ["True", "pth"]


@pytest.mark.parametrize("value", ["", "0", "false", "off", "OFF"])
def test_off_values_leave_it_off(value):
    code = "import sys, prefect_future_anchor as p; print(p.is_installed(), len(sys.meta_path))"
    proc = python(code, environment(PREFECT_FUTURE_ANCHOR=value))
    baseline = python(code, environment())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout == baseline.stdout
    assert proc.stdout.split()[0] == "False"


@pytest.mark.parametrize("value", ["yes", "2", "enabled"])
def test_bad_value_warns_once_and_starts_normally(value):
    code = "import prefect_future_anchor as p; print('alive', p.is_installed())"
    proc = python(code, environment(PREFECT_FUTURE_ANCHOR=value))
    assert proc.returncode == 0
    assert proc.stdout.split() == ["alive", "False"]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr  # although site runs a venv's .pth lines twice
    assert f"ignoring PREFECT_FUTURE_ANCHOR={value!r}" in lines[0] and "not activated" in lines[0]


@pytest.mark.parametrize("broken", ["no autostart.py", "install() raises"])
def test_failure_inside_the_hook_never_stops_the_interpreter(tmp_path, broken):
    """A shadowing copy of the package on PYTHONPATH breaks the hook at the first
    trigger import; that import still succeeds and the program carries on."""
    package = tmp_path / "prefect_future_anchor"
    package.mkdir()
    (package / "__init__.py").write_text("")
    if broken == "install() raises":
        shutil.copy(ROOT / "prefect_future_anchor" / "autostart.py", package / "autostart.py")
        (package / "lifecycle.py").write_text("raise RuntimeError('boom from lifecycle')\n")
    (tmp_path / "prefect_dask").mkdir()
    (tmp_path / "prefect_dask" / "__init__.py").write_text("VALUE = 'decoy runner package'\n")
    env = environment(PREFECT_FUTURE_ANCHOR="1", PYTHONPATH=str(tmp_path))
    proc = python("import prefect_dask; print('alive', prefect_dask.VALUE)", env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "alive decoy runner package"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "could not switch the shim on" in lines[0], proc.stderr
    if broken == "install() raises":
        assert "boom from lifecycle" in lines[0]


# -- the seed flow, switched on from outside ------------------------------------------------


def test_seed_flow_on_dask_switched_on_by_the_environment(tmp_path, dask_address):
    stock = run_seed_script(tmp_path, "dask", dask_address, environment())
    assert stock["result"] == [84] * 10 and not stock["installed"]
    if stock_warns("dask"):
        assert stock["warnings"] >= 1, "stock runner did not warn: this environment does not show the bug"
    shimmed = run_seed_script(tmp_path, "dask", dask_address, environment(PREFECT_FUTURE_ANCHOR="1"))
    assert shimmed["result"] == [84] * 10
    assert shimmed["warnings"] == 0
    assert shimmed["installed"] and shimmed["hook"] == "pth"
    assert {"dask.track"} <= set(shimmed["applied"])


def test_seed_flow_on_dask_under_run(tmp_path, dask_address):
    shimmed = run_seed_script(
        tmp_path, "dask", dask_address, environment(), command_prefix=[*cli(), "run", "--"]
    )
    assert shimmed["result"] == [84] * 10
    assert shimmed["warnings"] == 0
    assert shimmed["installed"]
    assert {"dask.track"} <= set(shimmed["applied"])


def test_seed_flow_on_ray_switched_on_by_the_environment(tmp_path, ray_address):
    shimmed = run_seed_script(tmp_path, "ray", ray_address, environment(PREFECT_FUTURE_ANCHOR="1"))
    assert shimmed["result"] == [84] * 10
    assert shimmed["warnings"] == 0
    assert shimmed["installed"]
    assert {"ray.track"} <= set(shimmed["applied"])


# -- prefect-future-anchor run --------------------------------------------------------------


def test_run_keeps_the_users_sitecustomize(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import sys\nMARK = 'user sitecustomize ran'\n")
    code = "import json, sitecustomize; print(json.dumps(sitecustomize.MARK))\n" + HOOK_PROBE
    proc = subprocess.run(
        [*cli(), "run", "--", PYTHON, "-c", code],
        env=environment(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    mark, probe = proc.stdout.splitlines()
    assert json.loads(mark) == "user sitecustomize ran"
    assert json.loads(probe) == {"hook": "pth", "heavy": []}


def test_run_reports_a_failing_user_sitecustomize_as_python_does(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("raise ValueError('user start-up code failed')\n")
    proc = subprocess.run(
        [*cli(), "run", "--", PYTHON, "-c", HOOK_PROBE],
        env=environment(PYTHONPATH=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    stock = subprocess.run(
        [PYTHON, "-c", "pass"], env=environment(PYTHONPATH=str(tmp_path)), capture_output=True, text=True
    )
    assert proc.returncode == 0 and stock.returncode == 0
    assert "Error in sitecustomize" in stock.stderr and "user start-up code failed" in stock.stderr
    # Once from the CLI's own interpreter (same PYTHONPATH), once from the command's.
    assert proc.stderr == stock.stderr * 2
    assert json.loads(proc.stdout) == {"hook": "pth", "heavy": []}


def test_run_without_pth_uses_its_sitecustomize(tmp_path):
    """An interpreter that processes no .pth of ours (the package on PYTHONPATH only):
    run's sitecustomize starts the hook."""
    base = getattr(sys, "_base_executable", PYTHON)
    assert os.path.realpath(base) != os.path.realpath(PYTHON) or sys.prefix != sys.base_prefix, (
        "tests must run from a virtual environment"
    )
    purelib = sysconfig.get_paths()["purelib"]
    code = (
        HOOK_PROBE
        + "\nimport prefect_future_anchor as p, prefect_future_anchor.autostart as a"
        + "\nprint(p.is_installed(), a.activated_by)"
    )
    env = environment(PYTHONPATH=os.pathsep.join([str(ROOT), purelib]))
    bare = subprocess.run(
        [base, "-c", HOOK_PROBE], env=dict(env, PREFECT_FUTURE_ANCHOR="1"), capture_output=True, text=True
    )
    assert json.loads(bare.stdout)["hook"] is None, "the base interpreter processes our .pth: pick another"
    proc = subprocess.run(
        [*cli(), "run", "--", base, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    probe, activated = proc.stdout.splitlines()
    assert json.loads(probe) == {"hook": "sitecustomize", "heavy": []}
    assert activated.split() == ["True", "sitecustomize"]


def test_run_passes_install_options_through_the_environment():
    code = (
        "import os, prefect_future_anchor as p; r = p.status(); "
        "print(r.installed, r.on_exit, r.drain_timeout, os.environ['PREFECT_FUTURE_ANCHOR_ON_EXIT'])"
    )
    proc = subprocess.run(
        [*cli(), "run", "--on-exit", "cancel", "--drain-timeout", "7", "--", PYTHON, "-c", code],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "cancel", "7.0", "cancel"]


def test_run_disable_switches_those_patches_off_in_the_command():
    """Issue 33, item 4: ``run --disable`` reaches install() in the command (and its
    children) through the environment; status says by what."""
    code = (
        "import prefect_future_anchor as p, prefect_dask; r = p.status(); "
        "print(' '.join(f'{s.name}={s.state}' for s in r.patches if s.name.startswith('dask.'))); "
        "print(r.patch('dask.track').reason)"
    )
    proc = subprocess.run(
        [*cli(), "run", "--disable", "dask.track", "--", PYTHON, "-c", code],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    states, reason = proc.stdout.splitlines()[-2:]
    assert "dask.track=disabled" in states and "dask.final-states=disabled" in states
    assert reason == "disabled by PREFECT_FUTURE_ANCHOR_DISABLE"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--disable", "dask.trak", "--", "python", "-c", "pass"], "unknown patch name(s) 'dask.trak'"),
        (["--drain-timeout", "-3", "--", "python", "-c", "pass"], "not a positive number"),
        (["--on-exit", "later", "--", "python", "-c", "pass"], "invalid choice"),
        ([], "give the command to run"),
    ],
)
def test_run_rejects_bad_options(args, message):
    proc = subprocess.run(
        [*cli(), "run", *args], env=environment(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_run_exit_status_is_the_commands():
    proc = subprocess.run(
        [*cli(), "run", "--", PYTHON, "-c", "raise SystemExit(7)"],
        env=environment(),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 7
    missing = subprocess.run(
        [*cli(), "run", "--", "no-such-command-pfa"], env=environment(), capture_output=True, text=True
    )
    assert missing.returncode == 127 and "cannot run 'no-such-command-pfa'" in missing.stderr


# -- child processes ------------------------------------------------------------------------

CHILD = (
    "import json, os, subprocess, sys; "
    "out = subprocess.run([sys.executable, '-c', %r], capture_output=True, text=True, check=True).stdout; "
    "print(out.strip())" % HOOK_PROBE
)


@pytest.mark.parametrize("how", ["environment", "run"])
def test_child_processes_inherit_the_switch(how):
    if how == "environment":
        proc = python(CHILD, environment(PREFECT_FUTURE_ANCHOR="1"))
    else:
        proc = subprocess.run(
            [*cli(), "run", "--", PYTHON, "-c", CHILD],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == {"hook": "pth", "heavy": []}


WORKER_SCRIPT = """\
import json, os, sys
from prefect import flow, task
from prefect_dask import DaskTaskRunner


@task
def inside_worker():
    shim = sys.modules.get("prefect_future_anchor")
    return {
        "pid": os.getpid(),
        "switch": os.environ.get("PREFECT_FUTURE_ANCHOR"),
        "installed": bool(shim and shim.is_installed()),
        "applied": shim.status().applied if shim else [],
    }


cluster = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "dashboard_address": None}


@flow(task_runner=DaskTaskRunner(cluster_kwargs=cluster))
def spawn_worker():
    return inside_worker.submit().result()


if __name__ == "__main__":  # the worker process (spawn) imports this file again
    print("RESULT " + json.dumps({"pid": os.getpid(), "worker": spawn_worker()}))
"""


def test_dask_workers_started_by_the_flow_are_switched_on(tmp_path):
    """The flow's own LocalCluster: its worker process inherits the switch and the
    runner it unpickles (prefect_dask) is patched there too."""
    script = tmp_path / "worker_flow.py"
    script.write_text(WORKER_SCRIPT)
    seen = run_flow_script([PYTHON, str(script)], environment(PREFECT_FUTURE_ANCHOR="1"), tmp_path)
    worker = seen["worker"]
    assert worker["pid"] != seen["pid"]
    assert worker["switch"] == "1"
    assert worker["installed"] and "dask.track" in worker["applied"], worker


# -- status ---------------------------------------------------------------------------------


def test_status_reports_auto_activation():
    on = subprocess.run(
        [*cli(), "status", "--json"],
        env=environment(PREFECT_FUTURE_ANCHOR="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    off = subprocess.run(
        [*cli(), "status", "--json"], env=environment(), capture_output=True, text=True, timeout=120
    )
    assert on.returncode == 0 and off.returncode == 0, on.stderr + off.stderr
    on, off = json.loads(on.stdout), json.loads(off.stdout)
    assert on["installed"] and not off["installed"]
    assert on["autostart"]["switch"] == "on" and off["autostart"]["switch"] == "off"
    assert on["autostart"]["this_process"] == {"hook": "pth", "activation": "installed"}
    assert off["autostart"]["this_process"] == {"hook": None, "activation": None}
    (dist,) = [
        d
        for d in metadata.distributions(path=[sysconfig.get_paths()["purelib"]])
        if d.metadata["Name"] == "prefect-future-anchor"
    ]
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    kind = "editable" if direct_url.get("dir_info", {}).get("editable") else "wheel"
    for report in (on, off):
        assert report["autostart"]["new_interpreter_activates"] is True
        assert report["autostart"]["install"]["kind"] == kind
        assert report["autostart"]["install"]["pth"].endswith(autostart.PTH_NAME)
    assert {p["state"] for p in on["patches"]} <= {"pending", "skipped"}
    assert all(p["state"] == "off" for p in off["patches"])
    text = subprocess.run(
        [*cli(), "status"],
        env=environment(PREFECT_FUTURE_ANCHOR="maybe"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0
    assert "auto-activation: invalid (PREFECT_FUTURE_ANCHOR='maybe')" in text.stdout
    assert "new interpreters with PREFECT_FUTURE_ANCHOR=1: activate" in text.stdout


# -- packaging: a wheel and an editable install both activate -------------------------------


def test_wheel_and_editable_installs_activate(tmp_path):
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wheel and the virtual environment"
    dist = tmp_path / "dist"
    build = subprocess.run(
        [uv, "build", "--wheel", "--out-dir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert autostart.PTH_NAME in names and "prefect_future_anchor/bootstrap/sitecustomize.py" in names
    assert "prefect_future_anchor/autostart.pth" not in names

    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "-q", "-p", PYTHON, str(venv)], check=True, timeout=300)
    venv_python = str(venv / "bin" / "python")
    install = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "-q",
            "-p",
            venv_python,
            "--exclude-newer",
            "2025-06-15",
            str(wheel),
            "prefect==3.3.7",
            "prefect-dask==0.3.5",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-4000:]

    def check(kind: str) -> None:
        on = environment(PREFECT_FUTURE_ANCHOR="1")
        probe = subprocess.run(
            [venv_python, "-c", HOOK_PROBE], env=on, capture_output=True, text=True, cwd=tmp_path
        )
        assert json.loads(probe.stdout) == {"hook": "pth", "heavy": []}, probe.stderr
        code = "import prefect_future_anchor.lifecycle as l; print(l.is_installed())"
        for env, expected in ((on, "True"), (environment(), "False")):
            proc = subprocess.run(
                [venv_python, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path
            )
            assert proc.stdout.strip() == expected, proc.stderr
        status = subprocess.run(
            [str(venv / "bin" / "prefect-future-anchor"), "status", "--json"],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        report = json.loads(status.stdout)["autostart"]
        assert report["install"]["kind"] == kind and report["new_interpreter_activates"] is True, report

    check("wheel")
    runner = subprocess.run(
        [
            venv_python,
            "-c",
            "import prefect_dask, sys; print(sys.modules['prefect_future_anchor'].status().applied)",
        ],
        env=environment(PREFECT_FUTURE_ANCHOR="1"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert "'dask.track'" in runner.stdout, runner.stderr[-4000:]

    editable = subprocess.run(
        [uv, "pip", "install", "-q", "-p", venv_python, "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert editable.returncode == 0, editable.stderr[-4000:]
    check("editable")


CONCURRENT_IMPORTS = """
import json, sys, threading
start = threading.Barrier(2)
errors = []

def load(name):
    try:
        start.wait()
        __import__(name)
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=load, args=(n,)) for n in ("prefect_dask", "prefect_ray")]
for t in threads:
    t.start()
for t in threads:
    t.join()
report = sys.modules["prefect_future_anchor"].status()
print(json.dumps({"errors": errors, "states": {p.name: p.state for p in report.patches}}))
"""


FINDER_ENTERED_TWICE = """
import sys, threading
ours = next(f for f in sys.meta_path if getattr(f, "prefect_future_anchor_hook", None))
inside, go = threading.Event(), threading.Event()


class SlowFinder:
    # another finder that takes its time over prefect_dask on thread "A"
    def find_spec(self, name, path=None, target=None):
        if name == "prefect_dask" and threading.current_thread().name == "A":
            inside.set()
            go.wait(60)
        return None


sys.meta_path.insert(sys.meta_path.index(ours) + 1, SlowFinder())
found = {}
a = threading.Thread(target=lambda: found.setdefault("dask", ours.find_spec("prefect_dask")), name="A")
a.start()
assert inside.wait(60)
found["ray"] = ours.find_spec("prefect_ray")  # while thread A is inside the finder
go.set()
a.join(60)
print(" ".join(type(getattr(found[k], "loader", None)).__name__ for k in ("dask", "ray")))
"""


def test_finder_entered_by_two_threads_at_once_wraps_both():
    """Thread A is inside the switch's finder (for prefect_dask) when thread B asks
    it for prefect_ray: B's import must be wrapped too (a flag shared by all threads
    returned None for B, and prefect_ray was then never patched)."""
    proc = python(FINDER_ENTERED_TWICE, environment(PREFECT_FUTURE_ANCHOR="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.split() == ["_ActivateAfter", "_ActivateAfter"]


def test_two_threads_importing_both_runners_first_get_both_patched():
    """Both runner packages imported for the first time on two threads at once:
    each runner is patched, none left pending or skipped."""
    proc = python(CONCURRENT_IMPORTS, environment(PREFECT_FUTURE_ANCHOR="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = last_json(proc)
    assert data["errors"] == []
    assert data["states"]["dask.track"] == "applied", data
    assert data["states"]["ray.track"] == "applied", data
