"""What is patched, for which releases, and why: the one table the guards read.

The README's compatibility section is rendered from this module
(``./run readme`` calls :func:`update_readme`) and a test fails if the two
disagree.  Supporting a newly published release is a change to ``TESTED``
(and a matrix row in ``noxfile.py``), nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from typing import Dict, Optional, Tuple

Version = Tuple[int, int, int]

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


@dataclass(frozen=True)
class Patch:
    name: str
    distribution: str
    applies: str
    why: str


PATCHES = (
    Patch(
        "dask.anchor",
        "prefect-dask",
        ">=0.3.0,<0.3.6",
        "DaskTaskRunner.submit swaps upstream PrefectDaskFuture objects for raw "
        "distributed.Future objects; a dropped parent logs 'A future was garbage "
        "collected before it resolved' although its dependent uses it. Parents "
        "are kept until the dependent resolves. prefect-dask 0.3.6 removed the "
        "warning.",
    ),
    Patch(
        "ray.anchor",
        "prefect-ray",
        ">=0.4.0,<0.4.5",
        "RayTaskRunner.submit swaps upstream PrefectRayFuture objects for raw "
        "ray.ObjectRef objects (and pickles wait_for); the same false warning as "
        "on Dask. prefect-ray 0.4.5 removed the warning.",
    ),
    Patch(
        "ray.ready-del",
        "prefect-ray",
        ">=0.4.4,<0.4.5",
        "PrefectRayFuture.__del__ in prefect-ray 0.4.4 lost a 'return' and warns "
        "even for a finished run; a future whose ObjectRef is ready "
        "(ray.wait(timeout=0), nothing fetched) stays silent.",
    ),
    Patch(
        "dask.client-once",
        "prefect-dask",
        ">=0.3.4",
        "DaskTaskRunner creates its Dask client on first use with no lock: "
        "threads of a flow that submit their first runs at the same moment each "
        "create a client (and, with no address, a LocalCluster), and a child "
        "sent through one client can reach the scheduler before its parent sent "
        "through another, which cancels it ('lost dependencies'). The client is "
        "created once.",
    ),
    Patch(
        "dask.drain",
        "prefect-dask",
        ">=0.3.0",
        "A task submitted and not kept is lost when the flow ends (the dropped "
        "distributed.Future is released and the cluster closed). Unresolved runs "
        "are waited for, or cancelled and named, before the client closes.",
    ),
    Patch(
        "ray.drain",
        "prefect-ray",
        ">=0.4.0",
        "A task submitted and not kept is lost when the flow ends (ray.shutdown() "
        "runs while it is pending). Unresolved runs are waited for, or cancelled "
        "and named, before Ray is shut down.",
    ),
)

PATCH_NAMES = tuple(p.name for p in PATCHES)

_NUMERIC = re.compile(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_CLAUSE = re.compile(r"^\s*(>=|<=|==|<|>)\s*([0-9][0-9.]*)\s*$")


def parse_version(text: str) -> Version:
    """The numeric release of a version string: ``"3.4.7.dev2"`` -> ``(3, 4, 7)``."""
    match = _NUMERIC.match(text or "")
    if not match:
        raise ValueError(f"not a release number: {text!r}")
    return tuple(int(part or 0) for part in match.groups())  # type: ignore[return-value]


def in_range(version: Version, spec: str) -> bool:
    """Whether ``version`` satisfies a comma-separated spec like ``>=0.3.0,<0.3.6``."""
    for clause in spec.split(","):
        match = _CLAUSE.match(clause)
        if not match:
            raise ValueError(f"bad version clause {clause!r} in {spec!r}")
        op, bound_text = match.groups()
        bound = parse_version(bound_text)
        ok = {
            ">=": version >= bound,
            "<=": version <= bound,
            "==": version == bound,
            "<": version < bound,
            ">": version > bound,
        }[op]
        if not ok:
            return False
    return True


def installed_version(distribution: str) -> Optional[str]:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def detect() -> Dict[str, Optional[str]]:
    """Installed versions of prefect, prefect-dask and prefect-ray (None if absent)."""
    return {name: installed_version(name) for name in SUPPORTED}


@dataclass(frozen=True)
class Decision:
    """What the table says about one patch for the releases installed."""

    patch: Patch
    wanted: bool
    reason: str
    untested: bool = False


def decide(patch: Patch, versions: Dict[str, Optional[str]]) -> Decision:
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


def render_markdown() -> str:
    """The README's compatibility table, from the data above."""
    lines = [
        "| patch | package | applied for | why |",
        "|---|---|---|---|",
    ]
    for p in PATCHES:
        lines.append(f"| `{p.name}` | {p.distribution} | `{p.applies}` | {p.why} |")
    lines.append("")
    lines.append(
        "Supported: "
        + ", ".join(f"{name} `{spec}`" for name, spec in SUPPORTED.items())
        + ". Newest releases tested: "
        + ", ".join(f"{name} {version}" for name, version in TESTED.items())
        + "."
    )
    return "\n".join(lines)


def update_readme(path: str) -> bool:
    """Rewrite the compatibility block of the README at ``path``; True if it changed."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    start, end = "<!-- compat:start -->\n", "<!-- compat:end -->"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    updated = head + start + render_markdown() + "\n" + end + tail
    if updated != text:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(updated)
    return updated != text
