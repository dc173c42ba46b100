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
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional

import wrapt

from . import drain, guard, registry, releases
from .patches import Track
from .runtime import Runtime


def _modules() -> Dict[str, List[Any]]:
    """The patched modules, each with its patches in table order."""
    found: Dict[str, List[Any]] = {}
    for patch in registry.PATCHES:
        found.setdefault(patch.module_name, []).append(patch)
    return found


def _runtimes() -> List[Runtime]:
    seen: List[Runtime] = []
    for patch in registry.PATCHES:
        if patch.runtime is not None and all(patch.runtime is not r for r in seen):
            seen.append(patch.runtime)
    return seen


#: How long a module that another thread is half-way through importing is
#: waited for before install() gives up on patching it (it is then patched by
#: the next install()).
IMPORT_WAIT = 120.0

ENV_ON_EXIT = "PREFECT_FUTURE_ANCHOR_ON_EXIT"
ENV_DRAIN_TIMEOUT = "PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT"
ENV_DISABLE = "PREFECT_FUTURE_ANCHOR_DISABLE"


class UnsupportedReleaseError(RuntimeError):
    """``install(strict=True)`` found a release or runner structure it cannot patch."""


@dataclass
class PatchStatus:
    name: str
    distribution: str
    applies: str
    #: "applied" | "skipped" | "disabled" | "pending" (module not imported yet) | "off"
    state: str
    reason: str
    #: the installed releases newer than the newest tested ("prefect 3.10.0"), or None
    untested: Optional[str] = None


@dataclass
class Report:
    installed: bool
    versions: Dict[str, Optional[str]]
    on_exit: str
    drain_timeout: float
    patches: List[PatchStatus] = field(default_factory=list)
    #: patch name -> who disabled it
    disabled: Dict[str, str] = field(default_factory=dict)
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
            state = p.state + (f" (untested release {p.untested})" if p.untested and p.state == "applied" else "")
            lines.append(f"  {p.name:<{width}}  {state:<8} {p.reason}")
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
#: patch name -> who disabled it ("install(disable=...)", the environment, or the patch it needs)
_disabled: Dict[str, str] = {}


def _known_names() -> str:
    runners = sorted({p.runner for p in registry.PATCHES})
    return ", ".join(list(registry.PATCH_NAMES) + runners)


def _match(token: str) -> List[Any]:
    """The patches a disable entry names: a patch ("dask.final-states") or a whole runner ("ray")."""
    return [p for p in registry.PATCHES if p.name == token or p.runner == token]


def parse_disable(value: Any, source: str) -> Dict[str, str]:
    """Patch name -> "disabled by SOURCE" for a list or comma-separated string of
    patch names and runner prefixes; ValueError naming the valid ones for any other."""
    if value is None:
        return {}
    tokens = value.split(",") if isinstance(value, str) else list(value)
    chosen: Dict[str, str] = {}
    unknown = []
    for raw in tokens:
        token = str(raw).strip().lower()
        if not token:
            continue
        found = _match(token)
        if not found:
            unknown.append(str(raw).strip())
        for patch in found:
            chosen.setdefault(patch.name, f"disabled by {source}")
    if unknown:
        raise ValueError(
            f"unknown patch name(s) {', '.join(map(repr, unknown))} in {source}; "
            f"valid names: {_known_names()}"
        )
    return chosen


def _with_dependents(chosen: Dict[str, str]) -> Dict[str, str]:
    """``chosen`` plus every patch that needs a disabled one, saying which."""
    out = dict(chosen)
    changed = True
    while changed:
        changed = False
        for patch in registry.PATCHES:
            if patch.name in out:
                continue
            needed = next((name for name in patch.requires if name in out), None)
            if needed is not None:
                out[patch.name] = f"disabled because it needs {needed} ({out[needed]})"
                changed = True
    return out


def _disable_from_environment() -> Dict[str, str]:
    raw = os.environ.get(ENV_DISABLE, "")
    if not raw.strip():
        return {}
    chosen: Dict[str, str] = {}
    for token in raw.split(","):
        try:
            chosen.update({k: v for k, v in parse_disable(token, ENV_DISABLE).items() if k not in chosen})
        except ValueError as exc:
            guard.warn_once(f"env:{ENV_DISABLE}:{token.strip()}", "prefect-future-anchor: ignoring part of %s: %s", ENV_DISABLE, exc)
    return chosen


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
    disable: Optional[Iterable[str]] = None,
) -> Report:
    """Patch the stock Dask and Ray task runners (now, or when they are imported).

    ``on_exit`` ("wait", "cancel" or "ignore") and ``drain_timeout`` (seconds)
    default to ``PREFECT_FUTURE_ANCHOR_ON_EXIT`` / ``PREFECT_FUTURE_ANCHOR_DRAIN_TIMEOUT``,
    then to "wait" and 3600.  ``disable`` names patches to leave stock
    ("dask.final-states") or whole runners ("ray"); it adds to
    ``PREFECT_FUTURE_ANCHOR_DISABLE``, and a patch that needs a disabled one is
    disabled with it.  ``strict=True`` raises :class:`UnsupportedReleaseError`
    instead of warning when a release or runner structure cannot be patched.
    Calling it again updates the options (a patch disabled now is removed, one
    no longer disabled is applied).  Returns :func:`status`.
    """
    global _installed, _strict, _versions, _on_exit, _drain_timeout, _disabled
    env_on_exit, env_timeout = _options_from_environment()
    chosen_on_exit = drain.check_on_exit(on_exit) if on_exit is not None else env_on_exit
    chosen_timeout = drain.check_drain_timeout(drain_timeout) if drain_timeout is not None else env_timeout
    if isinstance(disable, str):
        disable = [disable]
    chosen_disabled = parse_disable(disable, "install(disable=...)")
    for name, why in _disable_from_environment().items():
        chosen_disabled.setdefault(name, why)
    chosen_disabled = _with_dependents(chosen_disabled)
    with _lock:
        _on_exit, _drain_timeout = chosen_on_exit, chosen_timeout
        for runtime in _runtimes():
            runtime.on_exit = _on_exit
            runtime.drain_timeout = _drain_timeout
        newly = [p for p in reversed(registry.PATCHES) if p.name in chosen_disabled and p.name not in _disabled]
        _disabled = chosen_disabled
        for patch in registry.PATCHES:
            if _skipped.get(patch.name, "").startswith("disabled") and patch.name not in _disabled:
                del _skipped[patch.name]
        if _installed:
            for patch in newly:
                if patch.applied:
                    _remove(patch)
            for module_name, patches in _modules().items():
                module = sys.modules.get(module_name)
                if module is not None and not _importing(module):
                    _apply(module, patches)
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
        to_hook, half_made = [], []
        try:
            for module_name, patches in _modules().items():
                module = sys.modules.get(module_name)
                if module is not None:
                    if _importing(module):
                        half_made.append(module)
                    else:
                        _apply(module, patches)
                elif module_name not in _hooked:
                    _hooked.add(module_name)
                    to_hook.append(module_name)
        except UnsupportedReleaseError:
            _uninstall_locked()
            raise
    # Outside our lock: wrapt runs post-import hooks (which take our lock) while
    # holding its own lock (wrapt 1.x), and registering takes wrapt's lock.
    for module_name in to_hook:
        wrapt.register_post_import_hook(_on_import, module_name)
    for module in half_made:
        _patch_once_imported(module)
    return status()


def _patch_once_imported(module: Any) -> None:
    """Another thread is importing ``module`` (its classes may not exist yet) and
    its post-import hooks have run or will never run for us: patch it as soon as
    the import completes, from a short-lived thread, so it is not left stock."""

    def wait_then_apply() -> None:
        deadline = time.monotonic() + IMPORT_WAIT
        pause = 0.001
        while _importing(module) and time.monotonic() < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            with _lock:
                patches = _modules().get(module.__name__, [])
                if _installed and not _importing(module) and sys.modules.get(module.__name__) is module:
                    if not _decided(patches):
                        _apply(module, patches, from_hook=True)
        except Exception as exc:
            guard.failed("deferred install", exc)

    threading.Thread(target=wait_then_apply, name="prefect-future-anchor-install", daemon=True).start()


def _decided(patches: List[Any]) -> bool:
    return any(p.applied or p.name in _skipped for p in patches)


def _importing(module: Any) -> bool:
    """Whether ``module`` is still being executed (it is in sys.modules, half
    made, while another thread imports it): its classes may not exist yet.  The
    importing thread's own activation, or the next install(), patches it once
    it is complete.  (Not for post-import hooks: the flag is still set there.)"""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _on_import(module: Any) -> None:
    """wrapt post-import hook: a runner module was just imported.  Under
    ``install(strict=True)`` a structure the shim cannot patch fails the import
    with :class:`UnsupportedReleaseError`, as ``install()`` itself would have."""
    try:
        with _lock:
            if not _installed:
                return
            patches = _modules().get(module.__name__)
            if patches:
                _apply(module, patches)
    except UnsupportedReleaseError:
        raise
    except Exception as exc:  # never break the user's import
        guard.failed("post-import hook", exc)


def _untested(patch: Any) -> List[str]:
    """The installed releases this patch depends on that are newer than the tested ones."""
    names = ["prefect"] + ([patch.distribution] if patch.distribution != "prefect" else [])
    return [f"{name} {_versions.get(name)}" for name in names if releases.is_untested(name, _versions.get(name))]


def _apply(module: Any, patches: List[Any], from_hook: bool = False) -> None:
    """Apply the module's patches in table order.  A runner whose track patch is
    refused for its structure is left wholly stock: its other patches were
    written for the same structure, so they are refused with it."""
    refused_track = None
    applied_untested = []
    for patch in patches:
        if isinstance(patch, Track) and _skipped.get(patch.name, "").startswith("unrecognised"):
            refused_track = patch
        if patch.applied or (patch.name in _skipped and patch.name not in _disabled):
            continue  # decided already (a later install() only takes up what is new)
        if patch.name in _disabled:
            _skipped[patch.name] = _disabled[patch.name]
            continue
        decision = releases.decide(patch, _versions)
        if not decision.wanted:
            _skipped[patch.name] = decision.reason
            continue
        if refused_track is not None and patch.runner == refused_track.runner:
            _skipped[patch.name] = f"refused with {refused_track.name}: {_skipped[refused_track.name]}"
            continue
        problem = patch.problem(module)
        if problem is not None:
            reason = f"unrecognised runner structure: {problem}"
            _skipped[patch.name] = reason
            if isinstance(patch, Track):
                refused_track = patch
            message = (
                f"prefect-future-anchor: not applying {patch.name} to "
                f"{patch.distribution} {_versions.get(patch.distribution)}: {problem}. "
                "Stock behaviour is kept; please report this release."
            )
            if _strict and not from_hook:
                _uninstall_locked()
                raise UnsupportedReleaseError(message)
            guard.warn_once(f"shape:{patch.name}", "%s", message)
            continue
        try:
            patch.apply(module)
        except Exception as exc:  # the shim's own failure: keep stock behaviour
            guard.failed(f"install {patch.name}", exc)
            _skipped[patch.name] = f"failed to apply ({type(exc).__name__}: {exc}); stock behaviour kept"
            continue
        _skipped.pop(patch.name, None)
        if _untested(patch):
            applied_untested.append(patch)
    for patch in applied_untested:
        guard.warn_once(
            f"untested:{patch.runner}",
            "prefect-future-anchor: untested release (%s; tested through %s); the %s patches are "
            "applied because the runner still has the expected structure",
            ", ".join(_untested(patch)),
            ", ".join(f"{name} {releases.TESTED[name]}" for name in dict.fromkeys(["prefect", patch.distribution])),
            patch.runner,
        )


def _remove(patch: Any) -> None:
    kept = patch.remove()
    if kept:
        guard.warn_once(
            f"kept:{patch.name}:{','.join(kept)}",
            "prefect-future-anchor: %s: left %s in place: something else replaced it after the shim "
            "did, and putting the original back would undo that change (the shim's wrapper inside "
            "passes every call through)",
            patch.name,
            ", ".join(kept),
        )


def _uninstall_locked() -> None:
    global _installed
    for patch in reversed(registry.PATCHES):
        _remove(patch)
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
        disabled = _disabled if _installed else _with_dependents(_safe_environment_disable())
        report = Report(
            _installed, versions, _on_exit, _drain_timeout, problems=releases.unsupported(versions), disabled=dict(disabled)
        )
        for patch in registry.PATCHES:
            decision = releases.decide(patch, versions)
            live = patch.live_problem() if _installed and patch.applied else None
            untested = ", ".join(_untested(patch)) if _installed and patch.applied else ""
            if not _installed:
                state, reason = "off", ("would apply: " if decision.wanted else "") + decision.reason
                if decision.wanted and patch.name in disabled:
                    reason += f"; {disabled[patch.name]}"
            elif patch.applied and live is not None:
                state, reason = "skipped", live
            elif patch.applied:
                state, reason = "applied", "; ".join([decision.reason] + patch.caveats())
                if isinstance(patch, Track) and _on_exit == "ignore":
                    reason += " (on_exit='ignore': a clean exit does not drain)"
            elif patch.name in disabled:
                state, reason = "disabled", disabled[patch.name]
            elif patch.name in _skipped:
                state, reason = "skipped", _skipped[patch.name]
            elif not decision.wanted:
                state, reason = "skipped", decision.reason
            else:
                state, reason = "pending", f"{decision.reason}; applied when {patch.module_name} is imported"
            report.patches.append(
                PatchStatus(patch.name, patch.distribution, patch.applies, state, reason, untested or None)
            )
        return report


def _safe_environment_disable() -> Dict[str, str]:
    try:
        return _disable_from_environment()
    except Exception:  # a status must still answer
        return {}
