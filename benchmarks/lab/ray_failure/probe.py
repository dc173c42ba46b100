"""Probe ray_failure() against a real local Ray.

Run:  RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled PYTHONPATH=benchmarks/lab/ray_failure \
      <python> benchmarks/lab/ray_failure/probe.py [basic|oom|cluster]

basic   : cases 1-5 on one local node (ray.init(num_cpus=2))
oom     : case 6a, Ray's memory monitor kills the task (RAY_memory_usage_threshold set very low)
cluster : case 6b, two raylets on this machine (ray.cluster_utils.Cluster): value only on the other node
          (must not be pulled), task on a node that dies (NodeDiedError / worker died), object lost with it.
"""

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PYTHONPATH"] = HERE + os.pathsep + os.environ.get("PYTHONPATH", "")  # workers import probe_counter

MODE = sys.argv[1] if len(sys.argv) > 1 else "basic"
if MODE == "oom":
    # read by the raylet at start: kill any task once node memory use exceeds 1 %
    os.environ["RAY_memory_usage_threshold"] = "0.01"
    os.environ["RAY_memory_monitor_refresh_ms"] = "100"
    os.environ["RAY_task_oom_retries"] = "0"

import ray  # noqa: E402

import probe_counter  # noqa: E402
from ray_failure import ray_failure, ray_failure_shape_ok  # noqa: E402

BIG = 150_000_000


def rss_mb():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def show(case, ref, wait_timeout=120.0, extra=""):
    t0 = time.time()
    ready, _ = ray.wait([ref], timeout=wait_timeout, fetch_local=False)
    waited = time.time() - t0
    if not ready:
        print(f"[{case}] NOT READY after {waited:.1f}s")
        return None
    before_count = probe_counter.COUNT
    r0, _ = rss_mb()
    t1 = time.perf_counter()
    res = ray_failure(ref)
    dt = (time.perf_counter() - t1) * 1e3
    r1, hwm = rss_mb()
    if res is None:
        desc = "None"
    elif isinstance(res, BaseException):
        cls = [c.__name__ for c in type(res).__mro__ if c.__module__.startswith("ray.")][:2]
        msg = " ".join(str(res).split())
        if len(msg) > 300:
            msg = msg[:300] + "..."
        notes = getattr(res, "__notes__", None)
        desc = f"{type(res).__name__} (ray classes {cls}) msg={msg!r}"
        cause = getattr(res, "cause", None)
        if isinstance(cause, BaseException):
            desc += f" cause={type(cause).__name__}"
        if notes:
            desc += f" notes={[' '.join(n.split())[:400] for n in notes]!r}"
    else:
        desc = f"str: {res!r}"
    print(
        f"[{case}] ready after {waited:.1f}s -> {desc}\n"
        f"    unpickles in driver during call: {probe_counter.COUNT - before_count}; "
        f"RSS {r0:.0f} -> {r1:.0f} MB (peak {hwm:.0f}); call {dt:.1f} ms {extra}"
    )
    return res


def basic():
    from probe_counter import Counted

    @ray.remote
    def small():
        return Counted(b"s" * 100)

    @ray.remote
    def big():
        return Counted(b"b" * BIG)

    @ray.remote(max_retries=0)
    def die0():
        os._exit(1)

    @ray.remote
    def die_default():
        os._exit(1)

    @ray.remote
    def boom():
        raise ValueError("boom from the task")

    @ray.remote
    def boom_big():
        raise ValueError("X" * 300_000)

    @ray.remote
    def sleeper(s):
        for _ in range(int(s * 10)):  # short sleeps: a non-force cancel lands between them
            time.sleep(0.1)
        return Counted(b"z")

    print(f"== Ray {ray.__version__}  python {sys.version.split()[0]}  shape check: {ray_failure_shape_ok()}")
    cw = ray._private.worker.global_worker.core_worker

    r = small.remote()
    show("1 small inline value", r)
    print(f"    object_exists(memory_store_only=True)={cw.object_exists(r, memory_store_only=True)}")
    c0 = probe_counter.COUNT
    ray.get(r)
    print(f"    positive control: ray.get -> unpickles {probe_counter.COUNT - c0}")

    r = big.remote()
    ray.wait([r], timeout=120, fetch_local=False)
    base, _ = rss_mb()
    show("2 150 MB plasma value", r, extra=f"(driver RSS before task {base:.0f} MB)")
    print(
        f"    object_exists(memory_store_only=True)={cw.object_exists(r, memory_store_only=True)} "
        f"object_exists()={cw.object_exists(r)} locations={ray.experimental.get_object_locations([r])[r]}"
    )
    c0 = probe_counter.COUNT
    v = ray.get(r)
    print(f"    positive control: ray.get -> unpickles {probe_counter.COUNT - c0}, RSS now {rss_mb()[0]:.0f} MB")
    del v, r

    show("3a os._exit(1), max_retries=0", die0.remote())
    show("3b os._exit(1), default retries (3)", die_default.remote())
    show("4a raises ValueError", boom.remote())
    r = boom_big.remote()
    res = show("4b raises ValueError with a 300 kB message (error object in plasma)", r)
    print(f"    object_exists(memory_store_only=True)={cw.object_exists(r, memory_store_only=True)}")

    r = sleeper.remote(60)
    time.sleep(3)
    ray.cancel(r)
    show("5a ray.cancel running task (force=False)", r)
    r = sleeper.remote(60)
    time.sleep(3)
    ray.cancel(r, force=True)
    show("5b ray.cancel running task (force=True)", r)
    hold = [sleeper.remote(8), sleeper.remote(8)]
    time.sleep(1)
    r = sleeper.remote(60)
    time.sleep(0.5)
    ray.cancel(r)
    show("5c ray.cancel queued task", r)
    ray.wait(hold, num_returns=2, timeout=60, fetch_local=False)
    put = ray.put(Counted(b"p" * 10))
    show("extra ray.put small value", put)
    print(f"driver unpickles total (includes the 2 positive controls): {probe_counter.COUNT}")


def oom():
    @ray.remote(max_retries=0)
    def hog():
        blocks = []
        for _ in range(40):
            blocks.append(bytearray(50_000_000))
            time.sleep(0.1)
        return len(blocks)

    print(f"== Ray {ray.__version__} (oom mode, RAY_memory_usage_threshold=0.01)")
    show("6a memory monitor kills task", hog.remote(), wait_timeout=60)


def cluster_mode(tmp):
    from ray.cluster_utils import Cluster
    from probe_counter import Counted

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 400 * 1024 * 1024, "temp_dir": tmp,
                        "include_dashboard": False},
    )
    try:
        # connect before the second raylet exists, so the driver attaches to the head node's raylet
        ray.init(address=cluster.address, include_dashboard=False)
        other = cluster.add_node(num_cpus=1, resources={"other": 1}, object_store_memory=400 * 1024 * 1024)
        cluster.wait_for_nodes()
        print(f"== Ray {ray.__version__} (cluster mode: head + 1 node)")
        cw = ray._private.worker.global_worker.core_worker

        @ray.remote(resources={"other": 1}, max_retries=0)
        def big_there():
            return Counted(b"b" * BIG)

        @ray.remote(resources={"other": 1}, max_retries=0)
        def boom_big_there():
            raise ValueError("X" * 300_000)

        @ray.remote(resources={"other": 1}, max_retries=0)
        def long_there():
            time.sleep(120)

        r = big_there.remote()
        show("6b 150 MB value only on the other node", r)
        assert ray.get_runtime_context().get_node_id() not in ray.experimental.get_object_locations([r])[r]["node_ids"]
        loc = ray.experimental.get_object_locations([r])[r]
        print(f"    after call: locations={loc} local object_exists()={cw.object_exists(r)} "
              f"(local node {ray.get_runtime_context().get_node_id()[:8]})")
        r2 = boom_big_there.remote()
        show("6c RayTaskError with 300 kB message, only on the other node", r2)
        r3 = long_there.remote()
        time.sleep(4)
        cluster.remove_node(other, allow_graceful=False)
        show("6d task on a node that dies (max_retries=0)", r3, wait_timeout=90)
        show("6e 150 MB value whose only node died (max_retries=0)", r, wait_timeout=30)
        try:
            ray.get(r, timeout=30)
        except Exception as exc:  # noqa: BLE001
            print(f"    ray.get(r) raises {type(exc).__name__}")
        show("6f same ref again, after ray.get ran the owner's recovery", r, wait_timeout=5)
        print(f"    locations now={ray.experimental.get_object_locations([r])[r]}")
    finally:
        ray.shutdown()
        cluster.shutdown()


def main():
    tmp = tempfile.mkdtemp(prefix="r", dir="/tmp/pfa-rayres")
    try:
        if MODE == "cluster":
            cluster_mode(tmp)
            return
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, object_store_memory=1024 * 1024 * 1024)
        try:
            basic() if MODE == "basic" else oom()
        finally:
            ray.shutdown()
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
