"""What a user installs: the sdist and the wheel, built from this checkout.

The wheel holds the package and the start-up hook, nothing else: the demo
(``prefect-future-anchor demo``) and the throw-away Prefect server it starts
(``prefect_future_anchor.server``) ship with it because the demo is a user
command that shows the fix on the user's own installation; neither is imported
unless that command runs.  Metadata must render on the package index
(``twine check --strict``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import prefect_future_anchor
from prefect_future_anchor import autostart

ROOT = Path(__file__).resolve().parent.parent

WHEEL = {
    "prefect_future_anchor/__init__.py",
    "prefect_future_anchor/anchor.py",
    "prefect_future_anchor/autostart.py",
    "prefect_future_anchor/bootstrap/sitecustomize.py",
    "prefect_future_anchor/cli.py",
    "prefect_future_anchor/context_cache.py",
    "prefect_future_anchor/dask_payloads.py",
    "prefect_future_anchor/dask_runner.py",
    "prefect_future_anchor/demo.py",
    "prefect_future_anchor/drain.py",
    "prefect_future_anchor/flow_engine.py",
    "prefect_future_anchor/guard.py",
    "prefect_future_anchor/lifecycle.py",
    "prefect_future_anchor/outcomes.py",
    "prefect_future_anchor/patches.py",
    "prefect_future_anchor/plain_walk.py",
    "prefect_future_anchor/process_pool.py",
    "prefect_future_anchor/py.typed",
    "prefect_future_anchor/ray_client.py",
    "prefect_future_anchor/ray_errors.py",
    "prefect_future_anchor/ray_runner.py",
    "prefect_future_anchor/ray_watch.py",
    "prefect_future_anchor/registry.py",
    "prefect_future_anchor/releases.py",
    "prefect_future_anchor/runtime.py",
    "prefect_future_anchor/server.py",
    "prefect_future_anchor-autostart.pth",
    # Python 3.15+ (PEP 829): the .start file beside the .pth and the top-level module it names
    "prefect_future_anchor-autostart.start",
    "_prefect_future_anchor_autostart.py",
}

#: The start-up hook files at the root of the wheel, with the text each must have.
HOOK_FILES = {
    autostart.PTH_NAME: autostart.pth_text,
    autostart.START_NAME: autostart.start_text,
    autostart.ENTRY_MODULE + ".py": autostart.entry_module_text,
}


def _uv() -> str:
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the distributions (./run puts it on PATH)"
    return uv


def _twine() -> Path:
    where = ROOT / ".venvs" / "twine"
    python = where / "bin" / "python"
    if not (where / ".pfa-ready").exists():
        subprocess.run([_uv(), "venv", "--quiet", "--python", sys.executable, str(where)], check=True, timeout=300)
        subprocess.run([_uv(), "pip", "install", "--quiet", "--python", str(python), "twine"], check=True, timeout=300)
        (where / ".pfa-ready").write_text("twine")
    return where / "bin" / "twine"


def test_sdist_and_wheel_contents_and_metadata(tmp_path):
    build = subprocess.run(
        [_uv(), "build", "--out-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600
    )
    assert build.returncode == 0, build.stderr[-4000:]
    version = prefect_future_anchor.__version__
    (wheel,) = tmp_path.glob(f"prefect_future_anchor-{version}-py3-none-any.whl")
    (sdist,) = tmp_path.glob(f"prefect_future_anchor-{version}.tar.gz")

    names = set(zipfile.ZipFile(wheel).namelist())
    info = f"prefect_future_anchor-{version}.dist-info/"
    assert {n for n in names if not n.startswith(info)} == WHEEL
    for name, text in HOOK_FILES.items():
        assert zipfile.ZipFile(wheel).read(name).decode() == text(), name
    assert f"{info}licenses/LICENSE" in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Typing :: Typed" in metadata

    members = {m.split("/", 1)[1] for m in tarfile.open(sdist).getnames() if "/" in m}
    assert {"LICENSE", "README.md", "pyproject.toml", "prefect_future_anchor/py.typed"} <= members

    check = subprocess.run([str(_twine()), "check", "--strict", str(wheel), str(sdist)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_package_has_no_import_circle():
    """Issue 35, section 8: no module of the package imports, at any depth and from
    any function, a module that imports it back (the release table and the runner
    modules, ray_client and ray_errors, were two circles)."""
    import ast

    package = ROOT / "prefect_future_anchor"
    graph = {}
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        graph[path.stem] = imported & {p.stem for p in package.glob("*.py")}

    def reaches(start, goal, seen):
        for name in graph[start] - seen:
            if name == goal or reaches(name, goal, seen | {name}):
                return True
        return False

    assert [name for name in sorted(graph) if reaches(name, name, set())] == []
