"""Issue 21 harness: wall and process CPU per Dask submit, and serialize_context alone.  python submit_cpu.py N PATCHED(0/1)"""
import sys, time, os
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))
import services

def body(n, patched):
    import submit
    import prefect_future_anchor
    if patched: prefect_future_anchor.install()
    up, use = submit._tasks()
    from prefect.context import serialize_context
    p = up.submit(0)
    for k in range(3):
        t = time.perf_counter(); c = time.process_time()
        fs = [use.submit(x=p) for _ in range(n)]
        print("per submit ms", (time.perf_counter()-t)/n*1e3, "cpu", (time.process_time()-c)/n*1e3)
        for f in fs: f.wait()
    t = time.perf_counter()
    for _ in range(n): serialize_context()
    print("serialize_context ms", (time.perf_counter()-t)/n*1e3)
    prefect_future_anchor.uninstall()

if __name__ == "__main__":
  with services.prefect_server():
    from prefect import flow
    from prefect_dask import DaskTaskRunner
    with services.dask_cluster(1, 1) as a:
        flow(body, task_runner=DaskTaskRunner(address=a))(int(sys.argv[1]), sys.argv[2]=="1")
