"""The throw-away Prefect server of the demo, the tests and the benchmarks leaves nothing behind."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from prefect_future_anchor.server import prefect_server


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=30) as response:
        return response.status == 200


def test_a_home_made_for_the_server_is_removed_and_a_given_one_kept(tmp_path):
    # No home given (the demo, the benchmarks): the server's PREFECT_HOME, with its
    # SQLite database and log, is a temp dir of its own and goes with the server.
    with prefect_server(startup_timeout=300) as url:
        made = Path(os.environ["PREFECT_HOME"])
        assert _healthy(url)
        assert (made / "server.log").is_file()
        assert made.name.startswith("pfa-prefect-home-")
    assert not made.exists(), f"the server's own home {made} was left behind"

    # A given home (the API-outage tests restart a server on its database): kept.
    given = tmp_path / "home"
    given.mkdir()
    with prefect_server(startup_timeout=300, home=str(given)) as url:
        assert os.environ["PREFECT_HOME"] == str(given)
        assert _healthy(url)
    assert (given / "server.log").is_file(), "a home the caller gave was removed"
