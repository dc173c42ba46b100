"""Tasks of the fault tests, in a plain module the Dask and Ray workers can import."""

from __future__ import annotations

import os

from prefect import task


@task
def parent(i):
    return i


@task
def child(x):
    return x * 2


@task
def raises(x):
    raise ValueError(f"child of {x} fails on purpose")


@task
def exits(x):
    os._exit(1)


class DriverSide:
    """State the flow body shares with the test's threads (locks, events, lists).

    Dask ships the flow function, closure and all, to the workers inside the run
    context; there this state is never used, so it travels as an empty copy.
    """

    def __init__(self, **attributes):
        self.__dict__.update(attributes)

    def __reduce__(self):
        return (DriverSide, ())
