"""``PREFECT_FUTURE_ANCHOR=1``: switch the shim on from outside the program.

Deployments, workers and containers run flow code nobody can edit, so the shim
is switchable from the environment, as with ``ddtrace-run``.  The .pth line
shipped in the wheel runs :func:`start` at interpreter start-up: it imports
nothing and only puts a finder on ``sys.meta_path``.  When the program first
imports ``prefect_dask``, ``prefect_ray`` or ``prefect_future_anchor``, the
finder runs :func:`post_import_spec` and, once that module has loaded,
:func:`activate`, that is ``install()``.
"""

import _thread
import sys

ENV = "PREFECT_FUTURE_ANCHOR"
PTH_NAME = "prefect_future_anchor-autostart.pth"

#: The start-up hook whose finder ran :func:`activate`: "pth", "sitecustomize" or None.
activated_by = None
#: None (not activated), "installed" or "failed: <error>".
activation = None
_lock = _thread.allocate_lock()


def switch(value):
    """True / False for a recognised value of ``PREFECT_FUTURE_ANCHOR``, None for any other."""
    text = (value or "").strip().lower()
    if text in ("1", "true", "on"):
        return True
    if text in ("", "0", "false", "off"):
        return False
    return None


def start(hook):
    """Read the switch; if on, watch for the first import of a trigger module.

    Self-contained (no module globals): the .pth line runs this function's
    source, compiled by exec() at every start-up, so it is kept small; exec()
    of a string, unlike compile(), does not build the ast module's types (~2
    ms).  prefect_dask and prefect_ray import their task_runners in __init__,
    so the runner is patched before the program can use it.  Never raises.
    """
    import os
    import sys
    from _thread import get_ident

    try:
        if any(getattr(f, "prefect_future_anchor_hook", None) for f in sys.meta_path):
            return  # started already: site runs a venv's .pth lines twice; run's sitecustomize
        raw = os.environ.get("PREFECT_FUTURE_ANCHOR", "")
        value = raw.strip().lower()
        if value in ("", "0", "false", "off"):
            return
        on = value in ("1", "true", "on")
        if not on:
            sys.stderr.write(
                "prefect-future-anchor: ignoring PREFECT_FUTURE_ANCHOR=%r: use 1, true or on to switch "
                "the shim on (0, false, off or unset leave it off); the shim is not activated\n" % raw
            )

        class Finder:
            prefect_future_anchor_hook = hook
            triggers = ("prefect_future_anchor", "prefect_dask", "prefect_ray") if on else ()
            post_import_spec = None
            busy = set()  # threads inside find_spec: the finders asked below may ask all finders again

            def find_spec(self, name, path=None, target=None):
                me = get_ident()
                if name not in self.triggers or me in self.busy:
                    return None
                self.busy.add(me)
                try:
                    if self.post_import_spec is None:
                        for other in sys.meta_path:
                            package = other is not self and getattr(other, "find_spec", None)
                            package = package and package("prefect_future_anchor", None)
                            if package:
                                break
                        file = os.path.join(package.submodule_search_locations[0], "autostart.py")
                        with open(file, "rb") as source:
                            code = compile(source.read(), file, "exec")
                        namespace = {"__name__": "prefect_future_anchor.autostart", "__file__": file}
                        exec(code, namespace)  # no import: the import lock is held here
                        self.post_import_spec = namespace["post_import_spec"]
                    return self.post_import_spec(self, name, path, target)
                except Exception as error:
                    self.triggers = ()
                    sys.stderr.write(
                        "prefect-future-anchor: could not switch the shim on (%r); continuing with "
                        "stock Prefect behaviour\n" % (error,)
                    )
                    return None
                finally:
                    self.busy.discard(me)

        sys.meta_path.insert(0, Finder())  # with an unrecognised value: an inert marker
    except Exception as error:
        sys.stderr.write(
            "prefect-future-anchor: start-up hook failed (%r); continuing without the shim\n" % (error,)
        )


def post_import_spec(finder, name, path, target):
    """The spec the other finders give for trigger ``name``, its loader wrapped in
    :class:`_ActivateAfter` (wrapt's post-import hook, in small).

    Runs inside the import system's find step (its lock held), so imports nothing.
    """
    for other in list(sys.meta_path):
        find = getattr(other, "find_spec", None)
        if other is not finder and find is not None:
            spec = find(name, path, target)
            if spec is not None:
                break
    else:
        return None
    if spec.loader is None or not hasattr(spec.loader, "exec_module"):
        return None
    spec.loader = _ActivateAfter(spec.loader, finder)
    return spec


class _ActivateAfter:
    """The module's own loader, then :func:`activate`; the module keeps its own loader."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        try:
            self.loader.exec_module(module)
        finally:
            module.__loader__ = self.loader
            if getattr(getattr(module, "__spec__", None), "loader", None) is self:
                module.__spec__.loader = self.loader
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        try:
            from prefect_future_anchor import autostart

            autostart.activate(self.finder.prefect_future_anchor_hook)
        except Exception as error:
            sys.stderr.write(
                "prefect-future-anchor: could not switch the shim on (%r); continuing with stock "
                "Prefect behaviour\n" % (error,)
            )


def activate(hook):
    """install() once; it reads PREFECT_FUTURE_ANCHOR_ON_EXIT / _DRAIN_TIMEOUT itself."""
    global activated_by, activation
    with _lock:
        if activation is not None:
            if activation == "installed":
                # another trigger module finished importing on another thread:
                # let install() patch what was still half imported before
                from prefect_future_anchor import lifecycle

                lifecycle.install()
            return
        activated_by = hook
        try:
            from prefect_future_anchor import lifecycle

            lifecycle.install()
            activation = "installed"
        except Exception as exc:
            activation = "failed: %r" % (exc,)
            raise


def waiting_hook():
    """The hook ("pth" / "sitecustomize") whose finder still waits for a trigger import, or None."""
    for finder in sys.meta_path:
        hook = getattr(finder, "prefect_future_anchor_hook", None)
        if hook and finder.triggers:
            return hook
    return None


def pth_text():
    """The shipped .pth file: one line that runs :func:`start` unless the switch is plainly off.

    The code is :func:`start`'s own without docstrings and comments: it is
    compiled at every start-up.  When the line runs again it stops at the
    ``sys.meta_path`` scan.
    """
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(start)))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    code = ast.unparse(tree) + "\nstart('pth')\n"
    return (
        "# prefect-future-anchor: PREFECT_FUTURE_ANCHOR=1 (or true/on) switches the shim on in every Python.\n"
        "# Unset, 0, false or off: this line reads one environment variable and does nothing else.\n"
        "# Generated by prefect_future_anchor.autostart.pth_text(); tests/test_activation.py checks it.\n"
        "import os, sys; exec(%r) if os.environ.get(%r, '').strip().lower() not in ('', '0', 'false', 'off') "
        "and not any(getattr(f, 'prefect_future_anchor_hook', None) for f in sys.meta_path) else None\n"
        % (code, ENV)
    )


if __name__ == "__main__":  # python -m prefect_future_anchor.autostart > prefect_future_anchor/autostart.pth
    sys.stdout.write(pth_text())
