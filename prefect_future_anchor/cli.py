"""``prefect-future-anchor`` command line: demo, status, run."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional

from . import autostart
from .lifecycle import ENV_DISABLE, ENV_DRAIN_TIMEOUT, ENV_ON_EXIT

BOOTSTRAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="prefect-future-anchor",
        description="Keep Prefect task-run futures alive on Dask and Ray until their dependents resolve.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run the seed flow on real Dask and Ray, stock then shimmed")
    demo.add_argument("--runner", choices=["dask", "ray", "both"], default="both")
    status = commands.add_parser("status", help="detected releases and what each patch does here")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    run = commands.add_parser(
        "run",
        help="run a command with the shim switched on (it and every Python process it starts)",
        description="Run COMMAND with PREFECT_FUTURE_ANCHOR=1 and the shim's sitecustomize first on "
        "PYTHONPATH; child processes inherit both. Example: prefect-future-anchor run -- python flow.py",
    )
    run.add_argument(
        "--on-exit",
        choices=["wait", "cancel", "ignore"],
        help=f"runs still unresolved when a task runner exits (sets {ENV_ON_EXIT}; default wait)",
    )
    run.add_argument(
        "--drain-timeout",
        metavar="SECONDS",
        help=f"longest wait for them with --on-exit wait (sets {ENV_DRAIN_TIMEOUT}; default 3600)",
    )
    run.add_argument(
        "--disable",
        metavar="NAMES",
        help=f"patches to leave stock, comma-separated names or runner prefixes, e.g. "
        f"dask.final-states,process-pool (sets {ENV_DISABLE}; 'prefect-future-anchor status' lists the names)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command, after --")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.runner)
    if args.command == "status":
        from .lifecycle import status as current

        report = current()
        activation = activation_status()
        if args.json:
            print(json.dumps(dict(report.to_dict(), autostart=activation), indent=2, sort_keys=True))
        else:
            print(report)
            print(render_activation(activation))
        return 0
    if args.command == "run":
        command = list(args.argv)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command:
            run.error("give the command to run, e.g. prefect-future-anchor run -- python flow.py")
        if args.drain_timeout is not None:
            from .drain import check_drain_timeout

            try:
                check_drain_timeout(args.drain_timeout)
            except ValueError as exc:
                run.error(str(exc))
        if args.disable is not None:
            from .lifecycle import parse_disable

            try:
                parse_disable(args.disable, "--disable")
            except ValueError as exc:
                run.error(str(exc))
        env = activation_environment(
            os.environ, on_exit=args.on_exit, drain_timeout=args.drain_timeout, disable=args.disable
        )
        return _exec(command, env)
    return 2  # pragma: no cover


def activation_environment(
    base: Mapping[str, str],
    on_exit: Optional[str] = None,
    drain_timeout: Optional[str] = None,
    disable: Optional[str] = None,
) -> Dict[str, str]:
    """``base`` with the switch on and the bootstrap directory first on PYTHONPATH."""
    env = dict(base)
    env[autostart.ENV] = "1"
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP] + rest)
    if on_exit is not None:
        env[ENV_ON_EXIT] = on_exit
    if drain_timeout is not None:
        env[ENV_DRAIN_TIMEOUT] = str(drain_timeout)
    if disable is not None:
        env[ENV_DISABLE] = disable
    return env


def _exec(command: List[str], env: Dict[str, str]) -> int:
    """Replace this process (signals and exit status are the command's own), or run it on Windows."""
    try:
        if os.name == "nt":  # pragma: no cover
            return subprocess.call(command, env=env)
        os.execvpe(command[0], command, env)
    except OSError as exc:
        print(f"prefect-future-anchor run: cannot run {command[0]!r}: {exc}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover (exec does not return)


_PROBE = (
    "import json, sys; "
    "hooks = [getattr(f, 'prefect_future_anchor_hook', None) "
    "for f in sys.meta_path if getattr(f, 'triggers', None)]; "
    "print(json.dumps({'waiting_hook': next((h for h in hooks if h), None), "
    "'heavy': sorted(m for m in sys.modules if m.split('.')[0] in ('prefect', 'prefect_dask', "
    "'prefect_ray', 'dask', 'distributed', 'ray', 'wrapt', 'prefect_future_anchor'))}))"
)


def _installation() -> Dict[str, Any]:
    """How this copy is installed and where its .pth hook is, from the distribution's RECORD."""
    from importlib import metadata

    try:
        dist = metadata.distribution("prefect-future-anchor")
    except metadata.PackageNotFoundError:
        return {"kind": "not installed", "pth": None}
    kind = "wheel"
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            kind = "editable"
    except (ValueError, OSError):
        pass
    pth = None
    for entry in dist.files or ():
        if entry.name == autostart.PTH_NAME:
            located = str(dist.locate_file(entry))
            pth = located if os.path.exists(located) else None
    return {"kind": kind, "pth": pth}


def activation_status() -> Dict[str, Any]:
    """Whether PREFECT_FUTURE_ANCHOR is on here, what it did in this process, and
    whether a new interpreter (same executable) activates with it."""
    raw = os.environ.get(autostart.ENV)
    on = autostart.switch(raw)
    installation = _installation()
    env = dict(os.environ)
    env[autostart.ENV] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP
    )
    try:
        probe = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=120
        )
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
        activates = seen["waiting_hook"] == "pth" and not seen["heavy"]
    except Exception as exc:  # a status command must still answer
        seen, activates = {"error": repr(exc)}, False
    if activates:
        why = (
            "the .pth hook runs, imports nothing and waits for the first import of prefect_dask / prefect_ray"
        )
    elif installation["kind"] == "not installed":
        why = (
            "prefect-future-anchor is not installed in this interpreter (run from a source tree or "
            "PYTHONPATH): no .pth hook; install it, or use 'prefect-future-anchor run'"
        )
    elif installation["pth"] is None:
        why = (
            f"this {installation['kind']} install has no {autostart.PTH_NAME} (built by an older "
            "backend?): reinstall it, or use 'prefect-future-anchor run'"
        )
    else:
        why = (
            f"{installation['pth']} is not in a directory site processes (pip --target or "
            "PYTHONPATH install, python -S?): use 'prefect-future-anchor run'"
        )
    return {
        "variable": raw,
        "switch": {True: "on", False: "off", None: "invalid"}[on],
        "this_process": {
            "hook": autostart.activated_by or autostart.waiting_hook(),
            "activation": autostart.activation,
        },
        "install": installation,
        "new_interpreter_activates": activates,
        "why": why,
        "probe": seen,
    }


def render_activation(status: Dict[str, Any]) -> str:
    variable = status["variable"]
    shown = "unset" if variable is None else repr(variable)
    this = status["this_process"]
    started = "not started by a hook"
    if this["hook"]:
        started = f"started by the {this['hook']} hook, {this['activation'] or 'waiting for a runner import'}"
    lines = [
        f"auto-activation: {status['switch']} (PREFECT_FUTURE_ANCHOR={shown}); this process: {started}",
        f"  install: {status['install']['kind']}; hook: {status['install']['pth'] or 'none found'}",
        "  new interpreters with PREFECT_FUTURE_ANCHOR=1: "
        + ("activate" if status["new_interpreter_activates"] else "do NOT activate")
        + f" ({status['why']})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
