"""The release table: parsing, decisions, and docs/compatibility.md's table rendered from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.version import Version

from prefect_future_anchor import registry, releases

COMPATIBILITY = Path(__file__).resolve().parent.parent / "docs" / "compatibility.md"


def compat_block(name: str) -> str:
    text = COMPATIBILITY.read_text()
    match = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)
    assert match, f"docs/compatibility.md has no {name} block"
    return match.group(1).strip()


def test_the_compatibility_table_is_generated_from_the_table():
    assert compat_block("compat") == registry.render_markdown().strip(), (
        "docs/compatibility.md's compatibility table is stale: run ./run readme"
    )


@pytest.mark.parametrize(
    "text, expected",
    [("3.4.7", "3.4.7"), ("0.3.5", "0.3.5"), ("3.0.0rc1", "3.0.0rc1"), ("2.20", "2.20.0"), ("3.9.1.dev3", "3.9.1.dev3")],
)
def test_parse_version(text, expected):
    assert releases.parse_version(text) == Version(expected)


def test_parse_version_rejects_garbage():
    with pytest.raises(ValueError, match="not a release number"):
        releases.parse_version("latest")


@pytest.mark.parametrize(
    "earlier, later",
    [
        ("3.10.0rc1", "3.10.0"),
        ("3.10.0.dev1", "3.10.0rc1"),
        ("3.9.1", "3.10.0rc1"),
        ("3.9.1", "3.10.0"),
        ("0.3.9", "0.3.10"),
        ("3.10.0", "3.10.0.post1"),
    ],
)
def test_pre_releases_sort_before_their_release(earlier, later):
    assert releases.parse_version(earlier) < releases.parse_version(later)


@pytest.mark.parametrize(
    "version, spec, inside",
    [
        ("0.3.5", ">=0.3.0,<0.3.6", True),
        ("0.3.6", ">=0.3.0,<0.3.6", False),
        ("0.2.10", ">=0.3.0,<0.3.6", False),
        ("0.4.4", ">=0.4.4,<0.4.5", True),
        ("0.4.3", ">=0.4.4,<0.4.5", False),
        ("0.6.0", ">=0.4.0", True),
        # pre-releases are inside an open range, and before the release they lead to
        ("3.10.0rc1", ">=3.0.0", True),
        ("3.10.0rc1", ">=3.10.0", False),
        # PEP 440: "<0.3.6" excludes 0.3.6's own pre-releases (they lead to the release that changed)
        ("0.3.6rc1", ">=0.3.0,<0.3.6", False),
        ("0.3.5.post1", ">=0.3.0,<0.3.6", True),
        ("3.4.14.dev2", ">=3.4.14", False),
    ],
)
def test_in_range(version, spec, inside):
    assert releases.in_range(releases.parse_version(version), spec) is inside


def test_in_range_rejects_a_bad_spec():
    with pytest.raises(ValueError, match="bad version spec"):
        releases.in_range(releases.parse_version("1.0"), ">>1.0")


# The claims of FACTS.md, row by row (every release leaves a dead worker's run RUNNING: final-states everywhere), checked against the table the guards read.
ROWS = [
    ("3.0.0", "0.3.0", "0.4.0", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "ray.ready-del", "flow.drain-in-run"}),
    ("3.2.7", "0.3.3", "0.4.3", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "ray.ready-del", "flow.drain-in-run"}),
    ("3.3.7", "0.3.5", "0.4.4", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "ray.ready-del", "dask.client-once", "flow.drain-in-run"}),
    ("3.4.6", "0.3.5", "0.4.3", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "ray.ready-del", "dask.client-once", "flow.drain-in-run"}),
    ("3.4.7", "0.3.6", "0.4.5", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "dask.client-once", "flow.drain-in-run"}),
    ("3.9.1", "0.3.7", "0.6.0", {"dask.track", "ray.track", "dask.final-states", "ray.final-states", "dask.context-once", "ray.context-once", "dask.payload-once", "dask.plain-walk", "ray.plain-walk", "dask.client-once", "process-pool.track", "process-pool.final-states", "flow.drain-in-run"}),
    ("2.20.17", "0.2.10", "0.3.7", set()),
]

# Which releases log the false warning (read from every wheel, FACTS.md).
FALSE_WARNING = [
    ("prefect-dask", "0.3.0", True),
    ("prefect-dask", "0.3.5", True),
    ("prefect-dask", "0.3.6", False),
    ("prefect-ray", "0.4.0", True),
    ("prefect-ray", "0.4.4", True),
    ("prefect-ray", "0.4.5", False),
    ("prefect-ray", "0.6.0", False),
]


@pytest.mark.parametrize("distribution, version, warns", FALSE_WARNING)
def test_false_warning_releases(distribution, version, warns):
    assert releases.has_false_warning(distribution, version) is warns


@pytest.mark.parametrize("prefect, dask, ray, wanted", ROWS)
def test_decisions_follow_the_facts(prefect, dask, ray, wanted):
    versions = {"prefect": prefect, "prefect-dask": dask, "prefect-ray": ray}
    decided = {p.name for p in registry.PATCHES if releases.decide(p, versions).wanted}
    assert decided == wanted


def test_prefect_2_is_reported_unsupported():
    problems = releases.unsupported({"prefect": "2.20.17", "prefect-dask": "0.2.10", "prefect-ray": None})
    assert problems == [
        "prefect 2.20.17 (supported: prefect>=3.0.0)",
        "prefect-dask 0.2.10 (supported: prefect-dask>=0.3.0)",
    ]


def test_newer_than_tested_is_flagged_untested():
    versions = {"prefect": "3.10.0", "prefect-dask": "0.3.7", "prefect-ray": None}
    drain = next(p for p in registry.PATCHES if p.name == "dask.track")
    decision = releases.decide(drain, versions)
    assert decision.wanted and decision.untested


@pytest.mark.parametrize("prefect", ["3.10.0rc1", "3.10.0", "4.0.0a1"])
def test_a_release_candidate_newer_than_tested_is_patched_and_flagged_untested(prefect):
    versions = {"prefect": prefect, "prefect-dask": "0.3.7", "prefect-ray": None}
    track = next(p for p in registry.PATCHES if p.name == "dask.track")
    decision = releases.decide(track, versions)
    assert decision.wanted and decision.untested


def test_a_release_candidate_of_the_first_supported_release_is_not_supported():
    versions = {"prefect": "3.0.0rc1", "prefect-dask": "0.3.0", "prefect-ray": None}
    track = next(p for p in registry.PATCHES if p.name == "dask.track")
    decision = releases.decide(track, versions)
    assert not decision.wanted and "unsupported release prefect 3.0.0rc1" in decision.reason


def test_the_tested_releases_are_not_flagged_untested():
    versions = {"prefect": "3.9.1", "prefect-dask": "0.3.7", "prefect-ray": "0.6.0"}
    assert not any(releases.decide(p, versions).untested for p in registry.PATCHES)
