"""The tests' Ray head neither reads nor leaves the user's Ray state.

A head killed without its own clean-up used to leave /tmp/ray/ray_current_cluster
behind, after which a user's ``RayTaskRunner(init_kwargs={"num_cpus": 2})`` failed
("When connecting to an existing cluster, num_cpus and num_gpus must not be
provided"); a token a newer Ray left in ~/.ray made an older one fail with
"InvalidAuthToken".  The head now has a temp dir of its own and no token auth.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

import psutil
import pytest

from conftest import ray_head, runners_available

pytestmark = pytest.mark.skipif("ray" not in runners_available(), reason="this environment has no prefect-ray")


def _marker():
    path = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return path.stat().st_mtime_ns if path.exists() else None


def _head_processes(temp_dir: str):
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_head_leaves_no_state_and_a_users_local_ray_still_starts(tmp_path):
    marker_before = _marker()
    if marker_before is not None:
        pytest.skip(
            "a ray_current_cluster file left by another program exists: a local RayTaskRunner "
            "with num_cpus fails here whatever this suite does (remove it, or run `ray stop`)"
        )
    dirs_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "pfa-ray-*")))
    with ray_head(tmp_path) as address:
        assert address.startswith("127.0.0.1:")
        (mine,) = set(glob.glob(os.path.join(tempfile.gettempdir(), "pfa-ray-*"))) - dirs_before
        assert _head_processes(mine), "the head does not run in its own temp dir"
    assert _marker() == marker_before, "the head wrote the user's /tmp/ray/ray_current_cluster"
    assert not os.path.exists(mine)
    gone, alive = psutil.wait_procs(_head_processes(mine), timeout=30)
    assert alive == []

    # What a user does next: a stock runner that starts a local Ray of its own.
    from prefect import flow, task
    from prefect_ray import RayTaskRunner

    @task
    def answer():
        return 42

    @flow(task_runner=RayTaskRunner(init_kwargs={"num_cpus": 2, "include_dashboard": False}))
    def users_flow():
        return answer.submit().result()

    assert users_flow() == 42
