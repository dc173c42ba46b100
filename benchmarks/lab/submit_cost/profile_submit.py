"""Issue 21 harness: cProfile of the flow thread around N Dask submits.  python profile_submit.py N PATCHED(0/1)"""
import sys, time, cProfile, pstats, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))
import services

def body(n, patched):
    import prefect_future_anchor, submit
    up, use = submit._tasks()
    if patched: prefect_future_anchor.install()
    p = up.submit(0)
    fs = [use.submit(x=p) for _ in range(10)]
    for f in fs: f.wait()
    pr = cProfile.Profile()
    t = time.perf_counter()
    pr.enable()
    fs = [use.submit(x=p) for _ in range(n)]
    pr.disable()
    print("per submit ms", (time.perf_counter()-t)/n*1e3)
    for f in fs: f.wait()
    pstats.Stats(pr).sort_stats("cumulative").print_stats(40)
    prefect_future_anchor.uninstall()

if __name__ == "__main__":
  with services.prefect_server():
    from prefect import flow
    from prefect_dask import DaskTaskRunner
    with services.dask_cluster(1, 1) as a:
        flow(body, task_runner=DaskTaskRunner(address=a))(int(sys.argv[1]), sys.argv[2] == "1")
