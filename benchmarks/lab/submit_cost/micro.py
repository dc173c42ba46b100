"""Cost of the pieces of a patched submit's bookkeeping, with a real Dask client (no prefect flow)."""
import sys, time, statistics, contextvars, threading
from functools import partial
from distributed import LocalCluster, Client

def med(f, n=2000, reps=7):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(n): f()
        out.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(out)

if __name__ == "__main__":
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1") as c, Client(c, set_as_default=False) as client:
        fs = [client.submit(lambda i: i, i, pure=False) for i in range(2)]  # never runs: no worker
        f = fs[0]
        print("copy_context", med(contextvars.copy_context))
        cond = threading.Condition(); d = {}
        def hold():
            with cond:
                d.pop(1, None); d[1] = 2
            with cond:
                cond.notify_all()
        print("hold-like (2 locks)", med(hold))
        print("closure+partial", med(lambda: partial(print, lambda *a: None)))
        print("add_done_callback", med(lambda: f.add_done_callback(lambda fut: None), n=500))
        print("loop.add_callback(noop)", med(lambda: client.loop.add_callback(lambda: None), n=500))
        print("future.done()", med(f.done))
        print("future.status", med(lambda: f.status))
