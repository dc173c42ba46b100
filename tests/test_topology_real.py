"""The topologies users run beyond one local Ray head and one machine's Dask (issue 19).

Real parts only: the session's Prefect server; a Ray cluster of a head (with the
Ray Client server) and a second node that has the ``second`` resource and no CPU,
each ``ray start --block`` in its own process group (tests/topology.py); a
``dask scheduler`` with two ``dask worker`` processes.  Nodes and workers are
killed by their process group, as a lost machine would be.  Every test runs the
stock control first, in the same test.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from conftest import dask_processes_at, runners_available
from fault_tasks import DriverSide, child, parent
from prefect import flow
from topology import SECOND, ray_cluster, records_worker, visible_then_blocks

RUNNERS = runners_available()

#: how long a test waits for the API's task-run recorder to store a final state
API_LAG = 60.0


def api_state(task_run_id: Any) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(task_run_id).state


def settled_states(task_run_ids: List[Any], limit: float = API_LAG, final: bool = True) -> Dict[Any, Any]:
    """Each run's state in the API once every run has a final one (bounded poll of the
    server: its recorder stores an engine's report a moment after the engine made it);
    with ``final=False``, the states once the last poll's deadline passed."""
    deadline = time.monotonic() + limit
    while True:
        states = {}
        for task_run_id in task_run_ids:
            try:
                states[task_run_id] = api_state(task_run_id)
            except Exception:
                states[task_run_id] = None
        if final and all(s is not None and s.is_final() for s in states.values()):
            return states
        if time.monotonic() > deadline:
            return states
        time.sleep(0.2)


def wait_for_file(path: Path, limit: float = 120.0) -> None:
    """Readiness poll: a task leaves ``path`` once it runs."""
    deadline = time.monotonic() + limit
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.05)


# -- two Ray nodes, the second one lost -------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if "ray" not in RUNNERS:
        pytest.skip("this environment has no prefect-ray (PFA_RUNNERS)")
    with ray_cluster(tmp_path_factory.mktemp("ray-cluster")) as started:
        yield started


def run_node_death(address: str, node: Any, directory: Path) -> Tuple[List[Any], List[Any]]:
    """A run pinned to the second node, which is killed once the run shows Running;
    three parent/child pairs on the head beside it.  Returns [pinned, *head runs] and
    the head runs' results, read inside the flow (prefect-ray 0.4.x's future fetches
    them with ``ray.get``, which fails once the runner has shut Ray down)."""
    from prefect.futures import wait
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    kept: List[Any] = []
    results: List[Any] = []
    side = DriverSide(kill=node.kill, kept=kept, results=results)

    def second_node_dies():
        # max_retries=0: Ray would otherwise retry the run, and no other node has `second`
        with remote_options(num_cpus=0, resources={SECOND: 1}, max_retries=0):
            pinned = visible_then_blocks.submit(str(directory), "pinned")
        side.kept.append(pinned)
        parents = [parent.submit(i) for i in range(3)]
        children = [child.submit(p) for p in parents]
        side.kept.extend(parents + children)
        wait_for_file(directory / "pinned.running")
        side.kill()
        wait(side.kept)
        side.results.extend(f.result() for f in parents + children)

    # The driver attaches to the head's raylet (its node IP, 127.0.0.1): left to find its own,
    # Ray 2.47 took the machine's address, matched no raylet, and could attach to the second
    # node's, whose death then broke the driver's own connection ("Broken pipe").
    runner = RayTaskRunner(address=address, init_kwargs={"_node_ip_address": "127.0.0.1"})
    flow(second_node_dies, name="second-node-dies", task_runner=runner)()
    return kept, results


def test_ray_run_on_a_lost_node_ends_crashed(cluster, shim, tmp_path):
    (tmp_path / "stock").mkdir()
    stock, results = run_node_death(cluster.address, cluster.add_second_node(), tmp_path / "stock")
    pinned, *head = stock
    states = settled_states([r.task_run_id for r in head])
    assert all(s.is_completed() for s in states.values()), states
    assert api_state(pinned.task_run_id).is_running()  # stock: the zombie
    assert results == [0, 1, 2, 0, 2, 4]

    report = shim()
    assert report.patch("ray.final-states").state == "applied"
    (tmp_path / "shim").mkdir()
    shimmed, results = run_node_death(cluster.address, cluster.add_second_node(), tmp_path / "shim")
    pinned, *head = shimmed
    states = settled_states([r.task_run_id for r in shimmed])
    state = states.pop(pinned.task_run_id)
    assert state.is_crashed(), state
    assert "NodeDiedError" in state.message and "dead" in state.message, state.message
    assert pinned.state.is_crashed()
    assert all(s.is_completed() for s in states.values()), states  # nothing else reported Crashed
    assert results == [0, 1, 2, 0, 2, 4]


# -- Dask: a worker lost while the scheduler may still retry its runs --------------------


def run_worker_lost(address: str, pids: Dict[str, int], directory: Path, runs: int = 4) -> List[Any]:
    """``runs`` runs, each recording its worker and blocking; once all run, the worker
    holding the most of them is killed (its whole process group, nanny included) and
    the rest released: Dask's default allowed-failures recomputes them elsewhere."""
    from prefect.futures import wait
    from prefect_dask import DaskTaskRunner

    kept: List[Any] = []
    side = DriverSide(kept=kept, pids=pids)

    def worker_lost():
        side.kept.extend(records_worker.submit(str(directory), i) for i in range(runs))
        for i in range(runs):
            wait_for_file(directory / f"{i}.attempts")
        where = [(directory / f"{i}.attempts").read_text().split()[0] for i in range(runs)]
        doomed = max(set(where), key=where.count)
        os.killpg(os.getpgid(side.pids.pop(doomed)), signal.SIGKILL)
        (directory / "release").touch()
        wait(side.kept)

    flow(worker_lost, name="dask-worker-lost", task_runner=DaskTaskRunner(address=address))()
    return kept


def displaced(directory: Path, runs: int = 4) -> List[int]:
    """The runs that ran on two different workers."""
    return [i for i in range(runs) if len(set((directory / f"{i}.attempts").read_text().split())) == 2]


@pytest.mark.skipif("dask" not in RUNNERS, reason="this environment has no prefect-dask (PFA_RUNNERS)")
def test_runs_of_a_lost_dask_worker_are_recomputed_not_crashed(shim, tmp_path):
    """Three workers: the stock run loses one, the shimmed run another (one cluster start)."""
    outcome = {}
    with dask_processes_at(tmp_path, workers=3, nthreads=2) as (address, pids):
        for label in ("stock", "shim"):
            if label == "shim":
                assert shim().patch("dask.final-states").state == "applied"
            directory = tmp_path / label
            directory.mkdir()
            kept = run_worker_lost(address, pids, directory)
            assert displaced(directory), label  # the kill displaced at least one run
            states = settled_states([r.task_run_id for r in kept])
            outcome[label] = sorted(s.type.value for s in states.values())
            assert [r.result() for r in kept] == [0, 1, 2, 3], label
    assert outcome["stock"] == outcome["shim"] == ["COMPLETED"] * 4, outcome


# -- Ray Client (ray://) ----------------------------------------------------------------


def client_runner(cluster: Any) -> Any:
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(address=cluster.client_address)


def done_files(directory: Path) -> int:
    return len(list(directory.glob("*.done")))


def test_ray_client_seed_variants_and_fire_and_forget(cluster, shim, gc_warnings, tmp_path):
    """Under Ray Client the variants give their results without a false warning and
    fire-and-forget runs complete; the stock control loses fire-and-forget runs."""
    import flows
    import prefect_future_anchor
    from conftest import stock_warns

    (tmp_path / "stock").mkdir()
    (tmp_path / "shim").mkdir()
    flows.run_fire_and_forget(client_runner(cluster), str(tmp_path / "stock"))
    stock_done = done_files(tmp_path / "stock")
    assert flows.run_seed(client_runner(cluster)) == [84] * 10
    stock_warnings = gc_warnings.count

    shim()
    gc_warnings.count = 0
    out = flows.run_every_variant(client_runner(cluster), gc_warnings)
    assert {name: result for name, (result, _w) in out.items()} == {n: v[1] for n, v in flows.VARIANTS.items()}
    assert prefect_future_anchor.wait_released(60)
    assert gc_warnings.count == 0, out
    flows.run_fire_and_forget(client_runner(cluster), str(tmp_path / "shim"))
    assert done_files(tmp_path / "shim") == 10
    assert stock_done < 10, "control: stock loses fire-and-forget runs under Ray Client too"
    assert (stock_warnings > 0) == stock_warns("ray"), stock_warnings


@pytest.fixture
def client_session(cluster):
    """A Ray Client connection of the test's own (plain Ray, no Prefect)."""
    import ray

    ray.init(cluster.client_address)
    try:
        yield ray
    finally:
        ray.shutdown()


def test_ray_client_watching_pulls_nothing_to_the_head(cluster, client_session):
    """A result that lives only on the second node: the probe learns it is ready and
    the head still has no copy; the control, the driver's probe (ray.wait with
    fetch_local=False, which Ray Client drops), pulls it to the head."""
    import threading

    from prefect_future_anchor import ray_client
    from prefect_future_anchor.ray_watch import Watcher

    ray = client_session
    if not cluster.nodes or cluster.nodes[-1].proc.poll() is not None:
        cluster.add_second_node()

    @ray.remote(num_cpus=0, resources={SECOND: 1})
    def big() -> bytes:
        return b"x" * (4 << 20)  # far over the 100 KiB kept in owners' memory

    @ray.remote(num_cpus=0, resources={"node:__internal_head__": 0.001})
    def where(nested: List[Any]) -> Any:
        """On the head: the head's node id and the nodes holding each ref (nested, so
        unresolved: asking must not fetch it)."""
        import ray as cluster_ray

        located = cluster_ray.experimental.get_object_locations(nested[0])
        return cluster_ray.get_runtime_context().get_node_id(), [located[r]["node_ids"] for r in nested[0]]

    def watched_with(probe: Any) -> Any:
        ref = big.remote()
        seen = threading.Event()
        watcher = Watcher(probe=probe) if probe else Watcher()
        watcher.watch(ref, seen.set, seen.set)
        assert seen.wait(120), "the watcher never saw the result ready"
        watcher.pause()
        return ref

    def head_has(ref: Any, limit: float) -> bool:
        """Whether a copy of ``ref`` reaches the head within ``limit`` (a pull is asynchronous)."""
        deadline = time.monotonic() + limit
        while True:
            head, (nodes,) = ray.get(where.remote([[ref]]), timeout=120)
            if head in nodes or time.monotonic() > deadline:
                return head in nodes
            time.sleep(0.2)

    control = watched_with(None)
    assert head_has(control, 30), "control: Ray Client's ray.wait pulls the result to the head"
    shimmed = watched_with(ray_client.probe)
    assert not head_has(shimmed, 3)
    assert ray_client.failure(shimmed) is None
    assert ray.get(shimmed, timeout=120) == b"x" * (4 << 20)  # the value is intact and still fetchable


def test_ray_client_probe_keeps_no_error_nobody_asks_for(cluster, client_session):
    """One Ray Client connection across many flows' worth of runs whose Ray errors
    nobody asks about (runs the shim cancelled, or final states off): the probe
    keeps at most the last round's; before, every one stayed for the connection's
    life.  Control, same connection: an error asked for in the round's callback is
    still there to read."""
    import threading

    from prefect_future_anchor import ray_client
    from prefect_future_anchor.ray_watch import Watcher

    ray = client_session

    @ray.remote(num_cpus=0, max_retries=0)
    def fails(i: int) -> None:
        raise ValueError(f"run {i} fails")

    watcher = Watcher(probe=ray_client.probe)
    asked: List[Any] = []
    try:
        for flow_number in range(8):
            refs = [fails.remote(flow_number * 10 + i) for i in range(5)]
            seen = threading.Semaphore(0)
            for n, ref in enumerate(refs):
                if flow_number == 0 and n == 0:  # the control: this one's error is asked for

                    def ask(ref=ref, seen=seen):
                        asked.append(ray_client.failure(ref))
                        seen.release()

                    watcher.watch(ref, ask, seen.release)
                else:
                    watcher.watch(ref, seen.release, seen.release)
            for _ in refs:
                assert seen.acquire(timeout=120), "the watcher never saw a run end"
    finally:
        watcher.pause()
    assert isinstance(asked[0], Exception) and "fails" in str(asked[0])
    assert len(ray_client._probe._errors) <= 5, len(ray_client._probe._errors)


def test_ray_client_worker_death_ends_crashed(cluster, shim):
    """A run whose worker dies under Ray Client: stock leaves it Running; the shim,
    reading the cause inside the cluster, reports it Crashed with Ray's cause, and
    status() says ray.final-states applies."""
    from fault_tasks import dies_once_running
    from prefect_ray.context import remote_options

    import prefect_future_anchor

    def run() -> List[Any]:
        kept: List[Any] = []

        def worker_dies():
            with remote_options(max_retries=0):
                doomed = dies_once_running.submit()
            fine = child.submit(parent.submit(1))
            kept.extend([doomed, fine])
            doomed.wait()
            fine.wait()

        flow(worker_dies, name="client-worker-dies", task_runner=client_runner(cluster))()
        return kept

    doomed, fine = run()
    assert settled_states([fine.task_run_id])[fine.task_run_id].is_completed()
    assert api_state(doomed.task_run_id).is_running()  # stock: the zombie

    shim()
    doomed, fine = run()
    states = settled_states([doomed.task_run_id, fine.task_run_id])
    assert states[doomed.task_run_id].is_crashed(), states
    assert "WorkerCrashedError" in states[doomed.task_run_id].message
    assert states[fine.task_run_id].is_completed()
    assert prefect_future_anchor.status().patch("ray.final-states").state == "applied"


def test_the_probe_actor_needs_only_ray_in_the_cluster():
    """The actor class and the error reader pickle by value: a process that cannot
    import prefect_future_anchor (a cluster's worker) builds and runs them."""
    import subprocess
    import sys

    import ray.cloudpickle

    from prefect_future_anchor import ray_client, ray_errors

    blob = ray.cloudpickle.dumps(ray_client._sentinel_class(ray_errors._reader()))
    code = (
        "import pickle, sys\n"
        "class NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'prefect_future_anchor':\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NotInstalled())\n"
        "sentinel = pickle.loads(sys.stdin.buffer.read())()\n"
        "print(sentinel.poll([[]], 0), sentinel.forget(), 'prefect_future_anchor' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True, timeout=120)
    assert out.stdout.decode().split() == ["([],", "{})", "0", "False"], out.stderr.decode()[-2000:]


def test_ray_connected_tells_a_client_from_a_driver(cluster):
    """ray_client.connected(): False before Ray is connected, False for a driver,
    True under Ray Client; it imports nothing itself."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from prefect_future_anchor import ray_client\n"
        "print(ray_client.connected(), 'ray' in sys.modules)\n"
        "import ray\n"
        "ray.init(sys.argv[1], log_to_driver=False)\n"
        "print(ray_client.connected(), ray_client.final_states_problem())\n"
        "ray.shutdown()\n"
        "print(ray_client.connected())\n"
    )
    outputs = []
    for address in (cluster.address, cluster.client_address):
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, timeout=300)
        outputs.append(out.stdout.split())
        assert out.returncode == 0, out.stderr[-2000:]
    assert outputs == [["False", "False", "False", "None", "False"], ["False", "False", "True", "None", "False"]]
