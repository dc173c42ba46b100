"""Every patch, in the order the compatibility table shows them.

Each patch object is defined beside its runner's runtime and carries its own
range, reason, shape check, wrapping and unwrapping
(:mod:`prefect_future_anchor.patches`); this module only lists them, for
:mod:`prefect_future_anchor.lifecycle`, which decides and applies them, and for
the compatibility table of docs/compatibility.md (``./run readme`` calls
:func:`update_readme`; a test fails if the page is stale).
"""

from __future__ import annotations

from . import dask_payloads, dask_runner, flow_engine, process_pool, ray_runner
from .releases import SUPPORTED, TESTED

PATCHES = (
    dask_runner.TRACK,
    ray_runner.TRACK,
    dask_runner.FINAL_STATES,
    ray_runner.FINAL_STATES,
    ray_runner.READY_DEL,
    dask_runner.CLIENT_ONCE,
    dask_runner.CONTEXT_ONCE,
    ray_runner.CONTEXT_ONCE,
    dask_payloads.PAYLOAD_ONCE,
    dask_runner.PLAIN_WALK,
    ray_runner.PLAIN_WALK,
    process_pool.TRACK,
    process_pool.FINAL_STATES,
    flow_engine.patch,
)
PATCH_NAMES = tuple(p.name for p in PATCHES)


def render_markdown() -> str:
    """The compatibility table of docs/compatibility.md, from the data above."""
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
    """Rewrite the compatibility block (``<!-- compat:start -->`` to ``<!-- compat:end -->``)
    of the Markdown file at ``path`` (docs/compatibility.md); True if it changed."""
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
