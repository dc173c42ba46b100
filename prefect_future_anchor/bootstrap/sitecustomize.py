"""Start-up hook for ``prefect-future-anchor run`` (this directory leads ``PYTHONPATH``).

Where the .pth hook already ran it does nothing of its own; elsewhere (a
``--target`` or ``PYTHONPATH`` install, an interpreter whose site-packages lack
the hook) it runs :func:`prefect_future_anchor.autostart.start`.  Then it
imports the ``sitecustomize`` the interpreter would have imported without it,
as ``ddtrace-run`` does, so the user's own start-up code still runs.
``PYTHONPATH`` is left as it is: child processes inherit it.
"""

import os
import sys


def _start():
    if any(getattr(f, "prefect_future_anchor_hook", None) for f in sys.meta_path):
        return
    if os.environ.get("PREFECT_FUTURE_ANCHOR", "").strip().lower() in ("", "0", "false", "off"):
        return
    try:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "autostart.py")
        namespace = {"__name__": "prefect_future_anchor_bootstrap", "__file__": path}
        with open(path, encoding="utf-8") as source:
            exec(source.read(), namespace)  # not compile(): see autostart.start
        namespace["start"]("sitecustomize")
    except Exception as error:
        sys.stderr.write(
            "prefect-future-anchor: start-up hook failed (%r); continuing without the shim\n" % (error,)
        )


def _chain():
    """Import the next ``sitecustomize`` on sys.path; it replaces this one in sys.modules.

    Its errors propagate to site, which reports them as it would have.
    """
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:] = [entry for entry in sys.path if os.path.realpath(entry or os.curdir) != here]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        import sitecustomize  # noqa: F401  (the user's own)
    except ImportError as error:
        if error.name != "sitecustomize":
            raise
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_start()
_chain()
