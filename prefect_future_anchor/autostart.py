"""``PREFECT_FUTURE_ANCHOR=1``: switch the shim on from outside the program.

Deployments, workers and containers run flow code nobody can edit, so the shim
is switchable from the environment, as with ``ddtrace-run``.

What this module keeps true: with the switch on, ``install()`` runs once per
process, right after the first of the trigger modules (``prefect``,
``prefect_dask``, ``prefect_ray``, ``prefect_future_anchor``) has run its own
code and before that import returns to the program; with the switch off, an
interpreter's start-up reads one environment variable and does nothing else.
No step imports anything while the interpreter starts, and a step that fails
writes one line to stderr and leaves stock Prefect.

It happens in three steps:

1. **At start-up**, a hook runs :func:`start`, which puts one finder on
   ``sys.meta_path``.  Three hooks can run it, and whichever runs second (or
   again) stops when it sees that finder (its ``prefect_future_anchor_hook``):

   - the ``.pth`` line shipped in site-packages (:func:`pth_line`, hook "pth");
   - on Python 3.15+ (PEP 829), which skips the import lines of a ``.pth``
     whose ``.start`` file of the same name sits beside it, the ``.start``
     entry point (:func:`start_text`), a top-level module
     (:func:`entry_module_text`) that runs the same ``.pth`` line (hook "pth"
     too).  It is not under ``prefect_future_anchor``: importing that would load
     the whole package, wrapt included, into every interpreter;
   - ``prefect-future-anchor run``'s ``sitecustomize`` (``bootstrap/``, hook
     "sitecustomize"), for an install whose site-packages has no ``.pth``.

   The ``.pth`` line cannot import this module, so it carries :func:`start`'s
   own source as text (:func:`_hook_code`); the generated files are written by
   ``python -m prefect_future_anchor.autostart`` and tests/test_activation.py
   checks they match.
2. **At the first import of a trigger**, the finder runs this file's source
   (the import system holds its lock there, so nothing is imported) and
   :func:`post_import_spec` gives the spec the other finders give, with its
   loader wrapped in :class:`_ActivateAfter`.
3. **Once that module has run**, :class:`_ActivateAfter` removes the finder
   and calls :func:`activate`, that is ``install()``, once
   (:data:`activation`); ``install()`` reads PREFECT_FUTURE_ANCHOR_ON_EXIT /
   _DRAIN_TIMEOUT itself.
"""

import _thread
import sys

ENV = "PREFECT_FUTURE_ANCHOR"
PTH_NAME = "prefect_future_anchor-autostart.pth"
#: Python 3.15+ (PEP 829): the entry-point file beside the .pth; its presence
#: makes 3.15+ skip the .pth's import line (same name, same directory).
START_NAME = "prefect_future_anchor-autostart.start"
#: The top-level module the .start file names (shipped at the root of site-packages).
ENTRY_MODULE = "_prefect_future_anchor_autostart"
ENTRY_POINT = ENTRY_MODULE + ":run"

#: The start-up hook whose finder ran :func:`activate`: "pth" (the site-packages hook: the .pth
#: line, or on Python 3.15+ the .start entry point), "sitecustomize" or None.
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
            """Finds nothing itself: for a trigger, the other finders' spec, made to activate."""

            prefect_future_anchor_hook = hook
            triggers = ("prefect_future_anchor", "prefect", "prefect_dask", "prefect_ray") if on else ()
            post_import_spec = None
            busy = set()  # threads inside find_spec: the finders asked below may ask all finders again

            def find_spec(self, name, path=None, target=None):
                me = get_ident()
                if name not in self.triggers or me in self.busy:
                    return None
                self.busy.add(me)
                try:
                    if self.post_import_spec is None:
                        self.post_import_spec = self.load_post_import_spec()
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

            def load_post_import_spec(self):
                """autostart.py's post_import_spec, run from its source (no import: the import lock is held)."""
                for other in sys.meta_path:
                    package = other is not self and getattr(other, "find_spec", None)
                    package = package and package("prefect_future_anchor", None)
                    if package:
                        break
                file = os.path.join(package.submodule_search_locations[0], "autostart.py")
                with open(file, "rb") as source:
                    code = compile(source.read(), file, "exec")
                namespace = {"__name__": "prefect_future_anchor.autostart", "__file__": file}
                exec(code, namespace)
                return namespace["post_import_spec"]

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
            self._hand_back_loader(module)
        self._activate(module)

    def _hand_back_loader(self, module):
        """The module keeps its own loader: nothing of the shim's stays on it."""
        module.__loader__ = self.loader
        if getattr(getattr(module, "__spec__", None), "loader", None) is self:
            module.__spec__.loader = self.loader

    def _activate(self, module):
        """The finder's work is done: remove it, then :func:`activate` (imported now:
        the module has run, the import lock is no longer needed for it)."""
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        try:
            from prefect_future_anchor import autostart

            autostart.activate(self.finder.prefect_future_anchor_hook, module)
        except Exception as error:
            sys.stderr.write(
                "prefect-future-anchor: could not switch the shim on (%r); continuing with stock "
                "Prefect behaviour\n" % (error,)
            )


def activate(hook, module=None):
    """install() once, remembering which ``hook`` did it (:data:`activated_by`)
    and how it went (:data:`activation`).

    ``module`` is the trigger module, executed but still flagged as importing:
    when it is itself a patched module (``prefect``: its process pool) it is patched
    here, as a post-import hook would, before the import returns to the program.
    After a failure nothing is tried again.
    """
    global activated_by, activation
    with _lock:
        if activation is None:
            activated_by = hook
            try:
                _install_and_patch(module)
            except Exception as exc:
                activation = "failed: %r" % (exc,)
                raise
        elif activation == "installed":
            # another trigger finished importing on another thread: install()
            # patches what was still half imported before
            _install_and_patch(module)


def _install_and_patch(module):
    """``install()`` (:data:`activation` says "installed" once it returned), then the
    trigger ``module`` if the shim patches it.  The package is imported here, only
    once activated."""
    global activation
    from prefect_future_anchor import lifecycle

    lifecycle.install()
    activation = "installed"
    if module is not None:
        lifecycle._on_import(module)


def waiting_hook():
    """The hook ("pth" / "sitecustomize") whose finder still waits for a trigger import, or None."""
    for finder in sys.meta_path:
        hook = getattr(finder, "prefect_future_anchor_hook", None)
        if hook and finder.triggers:
            return hook
    return None


def _hook_code():
    """:func:`start`'s own code without docstrings and comments, then ``start('pth')``.

    It is compiled at every start-up, hence kept small.
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
    return ast.unparse(tree) + "\nstart('pth')\n"


def pth_line():
    """The .pth's one import line: runs :func:`start` unless the switch is plainly off.

    It uses nothing of ``site.py``'s (no ``sitedir``, no local or global of the
    function that runs it; Python 3.15 runs import lines from another function
    than 3.14 did): it imports ``os`` and ``sys`` itself and executes the hook
    in a namespace of its own.  When the line runs again it stops at the
    ``sys.meta_path`` scan.
    """
    return (
        "import os, sys; exec(%r, {'__name__': %r}) "
        "if os.environ.get(%r, '').strip().lower() not in ('', '0', 'false', 'off') "
        "and not any(getattr(f, 'prefect_future_anchor_hook', None) for f in sys.meta_path) else None"
        % (_hook_code(), ENTRY_MODULE, ENV)
    )


def pth_text():
    """The shipped .pth file: a comment and :func:`pth_line`."""
    return (
        "# prefect-future-anchor: PREFECT_FUTURE_ANCHOR=1 (or true/on) switches the shim on in every Python.\n"
        "# Unset, 0, false or off: this line reads one environment variable and does nothing else.\n"
        "# Python 3.15+ skips it: %s beside it runs the same line instead.\n"
        "# Generated by prefect_future_anchor.autostart.pth_text(); tests/test_activation.py checks it.\n"
        "%s\n" % (START_NAME, pth_line())
    )


def start_text():
    """The shipped .start file (PEP 829, Python 3.15+): one entry point, :data:`ENTRY_POINT`."""
    return (
        "# prefect-future-anchor on Python 3.15+ (PEP 829): runs the import line of %s\n"
        "# (which Python 3.15+ then skips), in a namespace of its own. PREFECT_FUTURE_ANCHOR=1 switches the\n"
        "# shim on; unset, 0, false or off: the entry point reads one environment variable and returns.\n"
        "# Generated by prefect_future_anchor.autostart.start_text(); tests/test_activation.py checks it.\n"
        "%s\n" % (PTH_NAME, ENTRY_POINT)
    )


def entry_module_text():
    """The shipped top-level module the .start file names; ``run()`` executes :func:`pth_line`."""
    return (
        '"""prefect-future-anchor\'s start-up hook for Python 3.15+ (PEP 829).\n'
        "\n"
        "%s names :func:`run`, which executes the import line\n"
        "of %s (Python 3.15+ skips that line because the .start\n"
        "file is there) in a namespace of its own: both hooks do exactly the same, and\n"
        "whichever runs second does nothing.\n"
        "\n"
        "Generated by prefect_future_anchor.autostart.entry_module_text(); tests/test_activation.py checks it.\n"
        '"""\n'
        "\n"
        "LINE = %r\n"
        "\n"
        "\n"
        "def run():\n"
        "    exec(LINE, {'__name__': __name__})\n" % (START_NAME, PTH_NAME, pth_line())
    )


GENERATED = {
    "autostart.pth": pth_text,
    "autostart.start": start_text,
    "autostart_entry.py": entry_module_text,
}


if __name__ == "__main__":  # python -m prefect_future_anchor.autostart: rewrites the generated files
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    for _name, _text in GENERATED.items():
        with open(os.path.join(here, _name), "w", encoding="utf-8", newline="\n") as _file:
            _file.write(_text())
