"""Which releases the shim knows, and how it reads versions: data the patches read.

The releases supported and tested, the releases with the false warning, and
:func:`decide`, which says whether one patch applies to the installed releases.
It imports nothing of the shim's: the patches (defined with their runners) read
it, and :mod:`prefect_future_anchor.registry` lists them.  Supporting a newly
published release is a change to ``TESTED`` (and a matrix row in
``noxfile.py``), nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Any, Dict, Optional

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

#: Upstream issue this library corrects.
UPSTREAM_ISSUE = "https://github.com/PrefectHQ/prefect/issues/17517"

#: Oldest releases the shim understands.  Below these the runner API is a
#: different one (Prefect 2.x: async ``submit(key, call)``, no ``TaskRunner``).
SUPPORTED = {
    "prefect": ">=3.0.0",
    "prefect-dask": ">=0.3.0",
    "prefect-ray": ">=0.4.0",
}

#: Newest release of each distribution the test matrix has run against.
#: A newer one is patched only if its structure still matches, with an
#: "untested release" warning.
TESTED = {
    "prefect": "3.9.1",
    "prefect-dask": "0.3.7",
    "prefect-ray": "0.6.0",
}


#: Releases whose dropped, unresolved future logs "A future was garbage
#: collected before it resolved" (read from every wheel; removed in prefect-dask
#: 0.3.6 and prefect-ray 0.4.5).
FALSE_WARNING = {
    "prefect-dask": ">=0.3.0,<0.3.6",
    "prefect-ray": ">=0.4.0,<0.4.5",
}

def parse_version(text: str) -> Version:
    """A release string as a PEP 440 version: ``"3.10.0rc1"`` sorts before ``"3.10.0"``."""
    try:
        return Version(text or "")
    except InvalidVersion:
        raise ValueError(f"not a release number: {text!r}") from None


def in_range(version: Version, spec: str) -> bool:
    """Whether ``version`` satisfies a comma-separated spec like ``>=0.3.0,<0.3.6``.

    Pre-releases count: ``3.10.0rc1`` is inside ``>=3.0.0`` (a user who installs a
    release candidate is patched like on the release), and outside ``>=3.10.0``.
    """
    try:
        specifiers = SpecifierSet(spec)
    except InvalidSpecifier:
        raise ValueError(f"bad version spec {spec!r}") from None
    return specifiers.contains(version, prereleases=True)


def installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def has_false_warning(distribution: str, version: Optional[str] = None) -> bool:
    """Whether ``distribution`` (installed, or at ``version``) logs the false warning."""
    version = version if version is not None else installed_version(distribution)
    try:
        return version is not None and in_range(parse_version(version), FALSE_WARNING[distribution])
    except (KeyError, ValueError):
        return False


def is_untested(distribution: str, version: Optional[str]) -> bool:
    """Whether ``version`` of ``distribution`` is newer than the newest release tested."""
    try:
        return version is not None and parse_version(version) > parse_version(TESTED[distribution])
    except (KeyError, ValueError):
        return False


def detect() -> Dict[str, Optional[str]]:
    """Installed versions of prefect, prefect-dask and prefect-ray (None if absent)."""
    return {name: installed_version(name) for name in SUPPORTED}


@dataclass(frozen=True)
class Decision:
    """What the table says about one patch for the releases installed."""

    patch: Any
    wanted: bool
    reason: str
    untested: bool = False


def decide(patch: Any, versions: Dict[str, Optional[str]]) -> Decision:
    prefect = versions.get("prefect")
    mine = versions.get(patch.distribution)
    if prefect is None:
        return Decision(patch, False, "prefect is not installed")
    if mine is None:
        return Decision(patch, False, f"{patch.distribution} is not installed")
    try:
        prefect_v, mine_v = parse_version(prefect), parse_version(mine)
    except ValueError as exc:
        return Decision(patch, False, f"unreadable version: {exc}")
    if not in_range(prefect_v, SUPPORTED["prefect"]):
        return Decision(
            patch,
            False,
            f"unsupported release prefect {prefect} (supported: prefect{SUPPORTED['prefect']})",
        )
    if not in_range(mine_v, SUPPORTED[patch.distribution]):
        return Decision(
            patch,
            False,
            f"unsupported release {patch.distribution} {mine} "
            f"(supported: {patch.distribution}{SUPPORTED[patch.distribution]})",
        )
    if not in_range(mine_v, patch.applies):
        return Decision(
            patch,
            False,
            f"not needed: {patch.distribution} {mine} is outside {patch.applies}",
        )
    untested = mine_v > parse_version(TESTED[patch.distribution]) or prefect_v > parse_version(
        TESTED["prefect"]
    )
    return Decision(
        patch,
        True,
        f"{patch.distribution} {mine} is in {patch.applies}",
        untested=untested,
    )


def unsupported(versions: Dict[str, Optional[str]]) -> list:
    """Installed distributions older than the shim understands, as messages."""
    problems = []
    for name, spec in SUPPORTED.items():
        found = versions.get(name)
        if found is None:
            continue
        try:
            ok = in_range(parse_version(found), spec)
        except ValueError:
            ok = False
        if not ok:
            problems.append(f"{name} {found} (supported: {name}{spec})")
    return problems
