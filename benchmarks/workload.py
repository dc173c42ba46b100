"""The tasks the benchmarks submit (a module the Dask workers can import).

No result persistence and no cache key: the benchmark measures submitting and
running, not storage.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE, persist_result=False)
def inc(x):
    return x + 1


@task(cache_policy=NO_CACHE, persist_result=False)
def size(items):
    return len(items)


@task(cache_policy=NO_CACHE, persist_result=False)
def produce_big(i, nbytes):
    return bytes([i % 256]) * nbytes


@task(cache_policy=NO_CACHE, persist_result=False)
def consume_big(blob):
    return len(blob)
