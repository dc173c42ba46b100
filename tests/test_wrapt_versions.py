"""The oldest wrapt the package declares (``wrapt>=1.14``) and the newest 2.x.

Each runs in a small virtual environment of its own (only wrapt; the package is
imported from this checkout), in a fresh interpreter:

- the lock order of ``install()``: wrapt 1.x runs post-import hooks while holding
  its own lock, and the shim's hook takes the shim's lock, so ``install()`` must
  not hold the shim's lock while it registers hooks (which takes wrapt's lock);
- wrapping and unwrapping a runner of the stock shape with that wrapt release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WRAPT = ["wrapt==1.14.1", "wrapt>=2,<3"]

SCRIPT = textwrap.dedent(
    """
    import sys, threading, types
    import wrapt
    import wrapt.importer
    import prefect_future_anchor
    from prefect_future_anchor import anchor, lifecycle
    print("WRAPT", wrapt.__version__ if hasattr(wrapt, "__version__") else "?")

    # 1. install() racing wrapt running post-import hooks (its lock held).
    registering = threading.Event()
    real_register = wrapt.register_post_import_hook

    def register(hook, name):
        registering.set()  # install() is about to take wrapt's lock
        return real_register(hook, name)

    wrapt.register_post_import_hook = register
    installer = threading.Thread(target=prefect_future_anchor.install, daemon=True)
    with wrapt.importer._post_import_hooks_lock:  # as wrapt 1.x holds it while it runs hooks
        installer.start()
        assert registering.wait(60), "install() never registered a hook"
        # a post-import hook of the shim now needs the shim's lock:
        free = lifecycle._lock.acquire(timeout=5)
        if free:
            lifecycle._lock.release()
    installer.join(60)
    print("HOOK_GETS_LOCK", free)
    print("INSTALL_RETURNED", not installer.is_alive())
    wrapt.register_post_import_hook = real_register
    prefect_future_anchor.uninstall()

    # 2. wrap and unwrap a runner of the stock shape with this wrapt release.
    class Raw:
        def __init__(self):
            self.callbacks = []

        def add_done_callback(self, callback):
            self.callbacks.append(callback)

        def finish(self):
            for callback in self.callbacks:
                callback(self)

    class PrefectDaskFuture:
        def __init__(self, raw):
            self._wrapped_future = raw

        @property
        def task_run_id(self):
            return id(self._wrapped_future)

        @property
        def wrapped_future(self):
            return self._wrapped_future

    class DaskTaskRunner:
        def submit(self, task, parameters=None, wait_for=None, dependencies=None):
            return PrefectDaskFuture(Raw())

        def __enter__(self):
            return self

        def __exit__(self, *exc_info):
            return None

    module = types.ModuleType("prefect_dask.task_runners")
    module.DaskTaskRunner, module.PrefectDaskFuture = DaskTaskRunner, PrefectDaskFuture
    stock_submit = DaskTaskRunner.__dict__["submit"]
    from prefect_future_anchor.dask_runner import TRACK

    assert TRACK.problem(module) is None, TRACK.problem(module)
    TRACK.apply(module)
    print("WRAPPER", type(DaskTaskRunner.__dict__["submit"]).__name__)
    with DaskTaskRunner() as runner:
        future = runner.submit(object(), {})
        held = anchor.live_anchors()
        future.wrapped_future.finish()
        print("HELD_THEN_RELEASED", held, anchor.live_anchors())
    TRACK.remove()
    print("RESTORED", DaskTaskRunner.__dict__["submit"] is stock_submit)
    """
)


def _venv(requirement: str) -> Path:
    uv = shutil.which("uv")
    assert uv, "uv is needed to build the wrapt environments (./run puts it on PATH)"
    name = requirement.replace("=", "").replace(">", "ge").replace("<", "lt").replace(",", "_")
    where = ROOT / ".venvs" / f"wrapt-{name}"
    python = where / "bin" / "python"
    stamp = where / ".pfa-ready"
    # the package's other dependency, packaging, beside the wrapt under test
    wanted = [requirement, "packaging"]
    if not stamp.exists() or stamp.read_text() != " ".join(wanted):
        subprocess.run([uv, "venv", "--quiet", "--python", sys.executable, str(where)], check=True, timeout=300)
        subprocess.run([uv, "pip", "install", "--quiet", "--python", str(python), *wanted], check=True, timeout=300)
        stamp.write_text(" ".join(wanted))
    return python


@pytest.mark.parametrize("requirement", WRAPT)
def test_install_lock_order_and_wrapping_with_wrapt(requirement):
    python = _venv(requirement)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PREFECT_FUTURE_ANCHOR", None)
    out = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env, cwd="/")
    assert out.returncode == 0, out.stderr[-4000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)
    major = requirement.split("=")[-1][0] if "==" in requirement else "2"
    assert lines["WRAPT"].startswith(major), lines
    assert lines["HOOK_GETS_LOCK"] == "True", "install() holds its lock while registering wrapt hooks"
    assert lines["INSTALL_RETURNED"] == "True"
    assert lines["WRAPPER"] == "FunctionWrapper"
    assert lines["HELD_THEN_RELEASED"] == "1 0"
    assert lines["RESTORED"] == "True"
