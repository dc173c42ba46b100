"""Clusters of more than one process for the topology tests: a Ray head with the
Ray Client server plus a second Ray node, each ``ray start --block`` in a
process group of its own (stopped or killed by that handle, never ``ray stop``,
which stops every Ray on the machine), each with its own ports and temp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, List

from conftest import RAY_ISOLATION, RAY_PORTS, RAY_START_TIMEOUT, ROOT, _raylet_logs, _wait_until
from prefect_future_anchor.server import _die_with_parent, free_port, stop_group

#: Attempts at starting a node: Ray 2.59 gives a raylet 30 s (hard-coded in node.py) to
#: register with its GCS, and on this 2-core machine at load 20 one often does not.
START_ATTEMPTS = 3

#: The custom resource only the second node has: a run that asks for it runs there.
SECOND = "second"

#: Ports a node other than the head must not share with the head (or another test's Ray).
NODE_PORTS = (
    "node-manager-port",
    "object-manager-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "metrics-export-port",
    "runtime-env-agent-port",
)


#: The second node's address: a loopback address of its own.  With two raylets on one node IP a
#: driver may attach to either (Ray 2.47 took the second node's: killing that node then broke the
#: driver's own raylet connection, "Broken pipe"); Linux routes all of 127.0.0.0/8 to lo.
SECOND_NODE_IP = "127.0.0.2"


def _ray_start(log: Path, temp_dir: str, argv: List[str], ip: str = "127.0.0.1") -> "subprocess.Popen":
    worker_path = os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--block", f"--node-ip-address={ip}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}", *argv],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=worker_path, **RAY_ISOLATION),
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )


class Node:
    """One ``ray start --block`` process group and its temp dir.  ``argv()`` gives the
    arguments with fresh ports: another attempt (:data:`START_ATTEMPTS`) gets
    new ones, as a raylet that never registered on a loaded machine may not again."""

    def __init__(self, log_dir: Path, name: str, argv: Callable[[], List[str]], ip: str = "127.0.0.1") -> None:
        for attempt in range(1, START_ATTEMPTS + 1):
            self.log = log_dir / f"{name}-{attempt}.log"
            self.temp_dir = tempfile.mkdtemp(prefix="pfa-ray-")  # short: Ray puts unix sockets in it
            self.args = argv()
            self.proc = _ray_start(self.log, self.temp_dir, self.args, ip)
            try:
                _wait_until(
                    lambda: re.search(rb"Ray runtime started", self.log.read_bytes()),
                    RAY_START_TIMEOUT, f"ray {name}", self.proc, self.log,
                )
                return
            except BaseException as exc:  # an interrupted start (Ctrl-C, SIGTERM) stops it too
                if not isinstance(exc, RuntimeError):
                    self.stop()
                    raise
                raylet = _raylet_logs(self.temp_dir)
                self.stop()
                if attempt == START_ATTEMPTS:
                    raise RuntimeError(f"{exc}\n{raylet}") from None
                sys.stderr.write(f"ray {name} attempt {attempt} failed, starting another:\n{exc}\n{raylet}\n")

    def kill(self) -> None:
        """The node dies at once (SIGKILL to its whole process group: raylet, workers)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> None:
        stop_group(self.proc, timeout=60, sig=signal.SIGKILL)  # as conftest.ray_head: SIGTERM costs 34 s
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class RayCluster:
    """A head (GCS ``address``, Ray Client ``client_address``) and optional second nodes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.nodes: List[Node] = []

        def head() -> List[str]:
            port, self.client_port = free_port(), free_port()
            self.address = f"127.0.0.1:{port}"
            self.client_address = f"ray://127.0.0.1:{self.client_port}"
            ports = [f"--{name}={free_port()}" for name in RAY_PORTS if name != "ray-client-server-port"]
            return ["--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                    f"--ray-client-server-port={self.client_port}", *ports]

        self.head = Node(log_dir, "head", head)

    def add_second_node(self) -> Node:
        """A node with no CPU and the ``second`` resource: only runs that ask for it land there."""
        node = Node(
            self.log_dir, f"second-{len(self.nodes)}",
            lambda: [f"--address={self.address}", "--num-cpus=0", f"--resources={{\"{SECOND}\": 1}}",
                     *(f"--{name}={free_port()}" for name in NODE_PORTS)],
            ip=SECOND_NODE_IP,
        )
        self.nodes.append(node)
        return node

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.head.stop()


@contextlib.contextmanager
def ray_cluster(log_dir: Path) -> Iterator[RayCluster]:
    cluster = RayCluster(log_dir)
    try:
        yield cluster
    finally:
        cluster.stop()


# -- tasks the topology tests run (workers import this module by name) ---------------

from prefect import task  # noqa: E402


@task
def visible_then_blocks(directory: str, name: str, limit: float = 120.0) -> str:
    """Once the API shows this run Running, leave ``<name>.running`` (with the pid) and
    block until ``release`` exists (bounded): the test kills its node or worker meanwhile."""
    import time

    from fault_tasks import _own_run_visible

    _own_run_visible()
    Path(directory, f"{name}.running").write_text(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not Path(directory, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return name


@task
def records_worker(directory: str, i: int, limit: float = 120.0) -> int:
    """One line per attempt in ``<i>.attempts`` naming the Dask worker that ran it, then
    block until ``release`` exists (bounded): a run the test's kill displaced has two lines."""
    import time

    from distributed import get_worker

    with open(Path(directory, f"{i}.attempts"), "a") as handle:
        handle.write(get_worker().address + "\n")
    deadline = time.monotonic() + limit
    while not Path(directory, "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return i
