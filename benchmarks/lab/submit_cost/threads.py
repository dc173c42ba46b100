"""Per-thread CPU of the driver over stock / patched batches (from /proc via psutil)."""
import sys, time, os, gc, statistics, threading, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[3] / "benchmarks"))
import services

def thread_cpu():
    import psutil
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    for t in psutil.Process().threads():
        name = names.get(t.id, "native")
        name = name.split("-")[0] if name.startswith(("Dask-Callback", "ThreadPool")) else name
        out[name] = out.get(name, 0.0) + t.user_time + t.system_time
    return out

def body(alternations, batch, shape):
    import submit, prefect_future_anchor
    up, use = submit._tasks()
    items = list(range(20000)) if shape == "list" else None
    res = {"stock": [], "patched": []}
    def one(side, n, record=True):
        if side == "patched": prefect_future_anchor.install()
        else: prefect_future_anchor.uninstall()
        gc.collect()
        p = up.submit(0)
        params = {"x": p} if items is None else {"x": p, "items": items}
        fs = []
        c0 = thread_cpu(); t0 = time.perf_counter(); p0 = time.process_time()
        for _ in range(n):
            fs.append(use.submit(**params))
        wall = time.perf_counter() - t0; proc = time.process_time() - p0; c1 = thread_cpu()
        for f in [p, *fs]: f.wait(600)
        prefect_future_anchor.wait_released(120)
        if record:
            res[side].append({"wall": wall / n, "proc": proc / n, **{k: (c1.get(k, 0) - c0.get(k, 0)) / n for k in c1}})
    one("stock", 20, False); one("patched", 20, False)
    for i in range(alternations):
        for side in (("stock", "patched") if i % 2 == 0 else ("patched", "stock")):
            one(side, batch)
    prefect_future_anchor.uninstall()
    return res

if __name__ == "__main__":
  alternations, batch, shape = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  with services.prefect_server():
    from prefect import flow
    from prefect_dask import DaskTaskRunner
    with services.dask_cluster(1, 1) as a:
        res = flow(body, task_runner=DaskTaskRunner(address=a))(alternations, batch, shape)
  keys = sorted(set(k for r in res["stock"] + res["patched"] for k in r))
  print("load", os.getloadavg())
  for k in keys:
      s = [r.get(k, 0) for r in res["stock"]]; p = [r.get(k, 0) for r in res["patched"]]
      ratios = [a / b for a, b in zip(p, s) if b]
      print(f"{k:28s} stock {statistics.median(s)*1e3:8.3f} ms  patched {statistics.median(p)*1e3:8.3f} ms  "
            f"median ratio {statistics.median(ratios) if ratios else float('nan'):.3f}  diff {(statistics.median(p)-statistics.median(s))*1e6:+.0f} us")
  json.dump(res, open(f"threads-{os.path.basename(sys.prefix)}-{shape}.json", "w"))
