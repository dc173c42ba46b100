"""install() / uninstall() / status(): the shim's whole lifecycle.

``install()`` reads the installed releases, decides each patch from the table in
:mod:`prefect_future_anchor.releases`, and patches a runner module as soon as
it is imported (wrapt post-import hooks); it never imports prefect_dask,
prefect_ray, dask or ray itself.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import wrapt

from . import drain, guard, releases
from .dask_runner import integration as dask_integration
from .integration import RunnerIntegration
from .ray_runner import integration as ray_integration

INTEGRATIONS: Dict[str, RunnerIntegration] = {
    "prefect-dask": dask_integration,
    "prefect-ray": ray_integration,
}

ENV_ON_EXIT = "PREFECT_FUTURE_ANCHOR_ON_EXIT"
ENV_DRAIN_TIMEOUT = "PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT"


class UnsupportedReleaseError(RuntimeError):
    """``install(strict=True)`` found a release or runner structure it cannot patch."""


@dataclass
class PatchStatus:
    name: str
    distribution: str
    applies: str
    state: str  # "applied" | "skipped" | "pending" (module not imported yet) | "off"
    reason: str


@dataclass
class Report:
    installed: bool
    versions: Dict[str, Optional[str]]
    on_exit: str
    drain_timeout: float
    patches: List[PatchStatus] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def patch(self, name: str) -> PatchStatus:
        for status in self.patches:
            if status.name == name:
                return status
        raise KeyError(name)

    @property
    def applied(self) -> List[str]:
        return [p.name for p in self.patches if p.state == "applied"]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __str__(self) -> str:
        versions = ", ".join(f"{k} {v or '(not installed)'}" for k, v in self.versions.items())
        lines = [
            f"prefect-future-anchor: {'installed' if self.installed else 'not installed'}"
            f" (on_exit={self.on_exit}, drain_timeout={self.drain_timeout:g}s)",
            f"releases: {versions}",
        ]
        width = max(len(p.name) for p in self.patches) if self.patches else 0
        for p in self.patches:
            lines.append(f"  {p.name:<{width}}  {p.state:<8} {p.reason}")
        lines.extend(f"  problem: {problem}" for problem in self.problems)
        return "\n".join(lines)


_lock = threading.RLock()
_installed = False
_strict = False
_versions: Dict[str, Optional[str]] = {}
_skipped: Dict[str, str] = {}
_hooked: set = set()
_on_exit = "wait"
_drain_timeout = drain.DEFAULT_DRAIN_TIMEOUT


def _options_from_environment() -> tuple:
    on_exit, timeout = "wait", drain.DEFAULT_DRAIN_TIMEOUT
    raw = os.environ.get(ENV_ON_EXIT, "").strip()
    if raw:
        try:
            on_exit = drain.check_on_exit(raw.lower())
        except ValueError as exc:
            guard.warn_once(f"env:{ENV_ON_EXIT}", "prefect-future-anchor: ignoring %s: %s", ENV_ON_EXIT, exc)
    raw = os.environ.get(ENV_DRAIN_TIMEOUT, "").strip()
    if raw:
        try:
            timeout = drain.check_drain_timeout(raw)
        except ValueError as exc:
            guard.warn_once(
                f"env:{ENV_DRAIN_TIMEOUT}", "prefect-future-anchor: ignoring %s: %s", ENV_DRAIN_TIMEOUT, exc
            )
    return on_exit, timeout


def install(
    *,
    strict: bool = False,
    on_exit: Optional[str] = None,
    drain_timeout: Optional[float] = None,
) -> Report:
    """Patch the stock Dask and Ray task runners (now, or when they are imported).

    ``on_exit`` ("wait", "cancel" or "ignore") and ``drain_timeout`` (seconds)
    default to ``PREFECT_FUTURE_ANCHOR_ON_EXIT`` / ``PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT``,
    then to "wait" and 3600.  ``strict=True`` raises :class:`UnsupportedReleaseError`
    instead of warning when a release or runner structure cannot be patched.
    Calling it again only updates the options.  Returns :func:`status`.
    """
    global _installed, _strict, _versions, _on_exit, _drain_timeout
    env_on_exit, env_timeout = _options_from_environment()
    chosen_on_exit = drain.check_on_exit(on_exit) if on_exit is not None else env_on_exit
    chosen_timeout = drain.check_drain_timeout(drain_timeout) if drain_timeout is not None else env_timeout
    with _lock:
        _on_exit, _drain_timeout = chosen_on_exit, chosen_timeout
        for integration in INTEGRATIONS.values():
            integration.on_exit = _on_exit
            integration.drain_timeout = _drain_timeout
        if _installed:
            # Catch up on a runner module that was still being imported by another
            # thread when we last looked (see _importing).
            for integration in INTEGRATIONS.values():
                module = sys.modules.get(integration.module_name)
                if module is not None and not _decided(integration) and not _importing(module):
                    _apply(integration, module)
            return status()
        _versions = releases.detect()
        problems = releases.unsupported(_versions)
        if problems:
            message = (
                "prefect-future-anchor does not support "
                + "; ".join(problems)
                + ". Nothing is patched for these; upgrade to Prefect 3 with "
                "prefect-dask>=0.3.0 / prefect-ray>=0.4.0, or uninstall prefect-future-anchor."
            )
            if strict:
                raise UnsupportedReleaseError(message)
            guard.warn_once("unsupported", "%s", message)
        _installed, _strict = True, strict
        to_hook = []
        try:
            for integration in INTEGRATIONS.values():
                module = sys.modules.get(integration.module_name)
                if module is not None:
                    if not _importing(module):
                        _apply(integration, module)
                elif integration.module_name not in _hooked:
                    _hooked.add(integration.module_name)
                    to_hook.append(integration.module_name)
        except UnsupportedReleaseError:
            _uninstall_locked()
            raise
    # Outside our lock: wrapt runs post-import hooks (which take our lock) while
    # holding its own lock (wrapt 1.x), and registering takes wrapt's lock.
    for module_name in to_hook:
        wrapt.register_post_import_hook(_on_import, module_name)
    return status()


def _decided(integration: RunnerIntegration) -> bool:
    return any(
        p.name in integration.applied or p.name in _skipped
        for p in releases.PATCHES
        if p.distribution == integration.distribution
    )


def _importing(module: Any) -> bool:
    """Whether ``module`` is still being executed (it is in sys.modules, half
    made, while another thread imports it): its classes may not exist yet.  The
    importing thread's own activation, or the next install(), patches it once
    it is complete.  (Not for post-import hooks: the flag is still set there.)"""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _on_import(module: Any) -> None:
    """wrapt post-import hook: a runner module was just imported."""
    try:
        with _lock:
            if not _installed:
                return
            for integration in INTEGRATIONS.values():
                if integration.module_name == module.__name__:
                    _apply(integration, module, from_hook=True)
    except Exception as exc:  # never break the user's import
        guard.failed("post-import hook", exc)


def _apply(integration: RunnerIntegration, module: Any, from_hook: bool = False) -> None:
    integration.module = module
    for patch in releases.PATCHES:
        if patch.distribution != integration.distribution or patch.name in integration.applied:
            continue
        decision = releases.decide(patch, _versions)
        if not decision.wanted:
            _skipped[patch.name] = decision.reason
            continue
        problem = integration.shape_problem(patch.name)
        if problem is not None:
            reason = f"unrecognised runner structure: {problem}"
            _skipped[patch.name] = reason
            message = (
                f"prefect-future-anchor: not applying {patch.name} to "
                f"{patch.distribution} {_versions.get(patch.distribution)}: {problem}. "
                "Stock behaviour is kept; please report this release."
            )
            if _strict and not from_hook:
                raise UnsupportedReleaseError(message)
            guard.warn_once(f"shape:{patch.name}", "%s", message)
            continue
        if decision.untested:
            guard.warn_once(
                f"untested:{patch.distribution}",
                "prefect-future-anchor: untested release (prefect %s, %s %s; tested through "
                "prefect %s, %s %s); patching because the runner still has the expected structure",
                _versions.get("prefect"),
                patch.distribution,
                _versions.get(patch.distribution),
                releases.TESTED["prefect"],
                patch.distribution,
                releases.TESTED[patch.distribution],
            )
        try:
            integration.patch(patch.name)
        except Exception as exc:  # the shim's own failure: keep stock behaviour
            guard.failed(f"install {patch.name}", exc)
            _skipped[patch.name] = f"failed to apply ({type(exc).__name__}: {exc}); stock behaviour kept"
            continue
        _skipped.pop(patch.name, None)


def _uninstall_locked() -> None:
    global _installed
    for integration in INTEGRATIONS.values():
        integration.unpatch()
    _skipped.clear()
    _installed = False


def uninstall() -> Report:
    """Restore every attribute :func:`install` replaced. Runs already anchored
    still release their anchors when they resolve."""
    with _lock:
        _uninstall_locked()
        return status()


def is_installed() -> bool:
    return _installed


def status() -> Report:
    """Detected releases and, for each patch, whether it is applied and why (not)."""
    with _lock:
        versions = dict(_versions) if _installed else releases.detect()
        report = Report(_installed, versions, _on_exit, _drain_timeout, problems=releases.unsupported(versions))
        by_distribution = {name: integration for name, integration in INTEGRATIONS.items()}
        for patch in releases.PATCHES:
            integration = by_distribution[patch.distribution]
            decision = releases.decide(patch, versions)
            if not _installed:
                state, reason = "off", ("would apply: " if decision.wanted else "") + decision.reason
            elif patch.name in integration.applied:
                state, reason = "applied", decision.reason
                if patch.name.endswith(".track") and _on_exit == "ignore":
                    reason += " (on_exit='ignore': a clean exit does not drain)"
            elif patch.name in _skipped:
                state, reason = "skipped", _skipped[patch.name]
            elif not decision.wanted:
                state, reason = "skipped", decision.reason
            else:
                state, reason = "pending", f"{decision.reason}; applied when {integration.module_name} is imported"
            report.patches.append(PatchStatus(patch.name, patch.distribution, patch.applies, state, reason))
        return report
