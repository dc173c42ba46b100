"""yappi (CPU clock, every thread) over stock and patched batches: where the patched side's extra CPU goes."""
import sys, time, os, gc, threading
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))
import services

def body(alternations, batch, shape, out):
    import yappi, submit, prefect_future_anchor
    up, use = submit._tasks()
    items = list(range(20000)) if shape == "list" else None
    stats = {}
    def one(side, n, record=True):
        if side == "patched": prefect_future_anchor.install()
        else: prefect_future_anchor.uninstall()
        gc.collect()
        p = up.submit(0)
        params = {"x": p} if items is None else {"x": p, "items": items}
        fs = []
        if record:
            yappi.clear_stats(); yappi.start(builtins=False, profile_threads=True)
        for _ in range(n):
            fs.append(use.submit(**params))
        if record:
            yappi.stop()
            threads = {t.id: t.name for t in yappi.get_thread_stats()}
            tt = {}
            for t in yappi.get_thread_stats():
                name = t.name if not t.name.startswith("Dask-Callback") else "Dask-Callback"
                tt[name] = tt.get(name, 0) + t.ttot
            funcs = {}
            for tid, tname in threads.items():
                for f in yappi.get_func_stats(filter={"ctx_id": tid}):
                    k = (tname.split("_")[0], f.module.split("site-packages/")[-1] + ":" + str(f.lineno) + " " + f.name)
                    a = funcs.setdefault(k, [0.0, 0.0, 0])
                    a[0] += f.ttot; a[1] += f.tsub; a[2] += f.ncall
            s = stats.setdefault(side, {"threads": {}, "funcs": {}, "n": 0})
            s["n"] += n
            for k, v in tt.items(): s["threads"][k] = s["threads"].get(k, 0) + v
            for k, v in funcs.items():
                a = s["funcs"].setdefault(k, [0.0, 0.0, 0]); a[0] += v[0]; a[1] += v[1]; a[2] += v[2]
        for f in [p, *fs]: f.wait(600)
        prefect_future_anchor.wait_released(120)
    import yappi
    yappi.set_clock_type("cpu")
    one("stock", 10, False); one("patched", 10, False)
    for i in range(alternations):
        for side in (("stock", "patched") if i % 2 == 0 else ("patched", "stock")):
            one(side, batch)
    prefect_future_anchor.uninstall()
    import pickle
    pickle.dump(stats, open(out, "wb"))

if __name__ == "__main__":
  alternations, batch, shape, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
  with services.prefect_server():
    from prefect import flow
    from prefect_dask import DaskTaskRunner
    with services.dask_cluster(1, 1) as a:
        flow(body, task_runner=DaskTaskRunner(address=a))(alternations, batch, shape, out)
