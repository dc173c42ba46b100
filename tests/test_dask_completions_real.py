"""How the Dask integration learns that runs ended (``dask_runner.Completions``), on a real cluster.

A patched submit hands its run to the client's ``Completions``: the client's
event loop registers the runs in batches and calls back on the loop itself, so
a submit wakes no thread and a completion hops to none (issue 21).  These tests
drive ``DaskRuntime.when_done`` with plain distributed futures of a real
``LocalCluster`` (the flow-level behaviour is in the other ``*_real`` tests).
The first and third fail with the previous design (``dask_runner.BATCHED =
False``: one ``Future.add_done_callback`` per run, every callback on
distributed's callback thread).
"""

from __future__ import annotations

import operator
import threading

import pytest

pytestmark = pytest.mark.usefixtures("dask_address")


class Calls:
    """Which thread called each ``on_done``, and how often."""

    def __init__(self) -> None:
        self.threads: dict = {}
        self.lost = 0
        self._changed = threading.Condition()

    def on_done(self, key):
        def called():
            with self._changed:
                self.threads.setdefault(key, []).append(threading.current_thread().name)
                self._changed.notify_all()

        return called

    def on_lost(self):
        with self._changed:
            self.lost += 1

    def wait(self, count: int, timeout: float = 120) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: len(self.threads) >= count, timeout=timeout)


@pytest.fixture
def client(dask_address):
    from distributed import Client

    with Client(dask_address, set_as_default=False) as client:
        yield client


def _loop_thread(client) -> str:
    async def name():
        return threading.current_thread().name

    return client.sync(name)


def test_callbacks_fire_once_each_on_the_client_loop_from_threads_submitting_at_once(client):
    from prefect_future_anchor import dask_runner

    runtime = dask_runner.runtime
    calls = Calls()
    futures = []
    lock = threading.Lock()

    def submit(first: int) -> None:
        for x in range(first, first + 250):
            future = client.submit(operator.add, x, 1, pure=False)
            with lock:
                futures.append(future)
            runtime.when_done(future, calls.on_done(future.key), calls.on_lost)

    threads = [threading.Thread(target=submit, args=(i * 250,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls.wait(1000), f"{len(calls.threads)} of 1000 callbacks fired"
    assert sorted(calls.threads) == sorted(f.key for f in futures)
    assert all(len(names) == 1 for names in calls.threads.values()), "a callback fired twice"
    assert {name for names in calls.threads.values() for name in names} == {_loop_thread(client)}
    assert calls.lost == 0
    assert all(f.status == "finished" for f in futures)


def test_a_run_already_done_when_registered_is_called_back(client):
    from prefect_future_anchor import dask_runner

    future = client.submit(operator.add, 1, 1, pure=False)
    assert future.result(timeout=60) == 2
    calls = Calls()
    dask_runner.runtime.when_done(future, calls.on_done("done"), calls.on_lost)
    assert calls.wait(1, timeout=60)


def test_a_run_whose_call_raised_is_called_back_off_the_loop(client):
    """Its callback may ask Dask for the exception (a blocking call): never on the loop."""
    from prefect_future_anchor import dask_runner

    calls = Calls()
    failing = client.submit(operator.truediv, 1, 0, pure=False)  # ZeroDivisionError
    dask_runner.runtime.when_done(failing, calls.on_done("failed"), calls.on_lost)
    assert calls.wait(1, timeout=60)
    assert failing.status == "error"
    assert calls.threads["failed"][0].startswith("prefect-future-anchor-dask")


def test_without_distributed_coroutine_each_run_falls_back_to_add_done_callback(client, monkeypatch):
    """If ``distributed.client.done_callback`` moves, the public callback still works."""
    import distributed.client

    from prefect_future_anchor import dask_runner

    original = distributed.client.done_callback

    def done_callback(future, callback):
        # No longer a coroutine function (distributed's own add_done_callback
        # still works with it: the loop awaits what it returns).
        return original(future, callback)

    monkeypatch.setattr(distributed.client, "done_callback", done_callback)
    calls = Calls()
    future = client.submit(operator.add, 2, 1, pure=False)
    dask_runner.runtime.when_done(future, calls.on_done("fallback"), calls.on_lost)
    assert calls.wait(1, timeout=60)
    assert calls.threads["fallback"][0].startswith("Dask-Callback-Thread")
    assert dask_runner._COMPLETIONS not in client.__dict__
