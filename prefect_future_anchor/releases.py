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


#: Releases whose dropped, unresolved future logs "A future was garbage
#: collected before it resolved" (read from every wheel; removed in prefect-dask
#: 0.3.6 and prefect-ray 0.4.5).
FALSE_WARNING = {
    "prefect-dask": ">=0.3.0,<0.3.6",
    "prefect-ray": ">=0.4.0,<0.4.5",
}

PATCHES = (
    Patch(
        "dask.track",
        "prefect-dask",
        ">=0.3.0",
        "DaskTaskRunner.submit swaps upstream PrefectDaskFuture objects for raw "
        "distributed.Future objects and nothing keeps the Prefect future: on "
        "prefect-dask 0.3.0-0.3.5 a dropped parent logs 'A future was garbage "
        "collected before it resolved' although its dependent uses it, and on "
        "every release a task submitted and not kept is lost when the flow ends "
        "(the client closes with it pending). Each submitted future is held until "
        "its run resolves (its __del__ is then silent), and the runs still "
        "unresolved at runner exit are waited for, or cancelled and named.",
    ),
    Patch(
        "ray.track",
        "prefect-ray",
        ">=0.4.0",
        "The same on Ray: RayTaskRunner.submit swaps PrefectRayFuture objects for "
        "ray.ObjectRef objects (and pickles wait_for); prefect-ray 0.4.0-0.4.4 logs "
        "the false warning, and every release loses unkept runs at ray.shutdown(). "
        "Completion is learnt with ray.wait(fetch_local=False) on one watcher "
        "thread: no result is fetched into the driver.",
    ),
    Patch(
        "dask.final-states",
        "prefect-dask",
        ">=0.3.0",
        "A task run whose Dask worker dies (the scheduler gives up on it: "
        "KilledWorker) never reports again: stock leaves it RUNNING in the API for "
        "good, its future says RUNNING and the flow ends Completed. The completion "
        "callback of a held run whose future ends in error reads the run's state "
        "and, unless the engine reported a final one, proposes Crashed naming the "
        "cause; runs cancelled at exit are proposed Cancelled; an exit after the "
        "flow run failed, timed out or was interrupted cancels its unresolved runs "
        "at once. Nothing is replaced on the runner (the track wrappers read it); "
        "a run that ends normally costs no API call.",
    ),
    Patch(
        "ray.final-states",
        "prefect-ray",
        ">=0.4.0",
        "The same on Ray: a run whose worker crashed, whose node died or whose "
        "object was lost (its ObjectRef holds a Ray error, read without fetching a "
        "successful result) is proposed Crashed; cancelled runs Cancelled.",
    ),
    Patch(
        "ray.ready-del",
        "prefect-ray",
        ">=0.4.0,<0.4.5",
        "PrefectRayFuture.__del__ asks whether a run finished with "
        "ray.get(timeout=0), which pulls the whole result into the driver, and "
        "0.4.4 lost a 'return' so it warns even for a finished run. A future whose "
        "ObjectRef is ready (ray.wait(fetch_local=False), nothing fetched) is "
        "dropped silently.",
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


def has_false_warning(distribution: str, version: Optional[str] = None) -> bool:
    """Whether ``distribution`` (installed, or at ``version``) logs the false warning."""
    version = version if version is not None else installed_version(distribution)
    try:
        return version is not None and in_range(parse_version(version), FALSE_WARNING[distribution])
    except (KeyError, ValueError):
        return False


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
