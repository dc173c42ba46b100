"""Importable by Ray workers through PYTHONPATH: counts unpickles per process."""
import os

COUNT = 0


def rebuild(payload_len, payload):
    global COUNT
    COUNT += 1
    return Counted(payload)


class Counted:
    def __init__(self, payload=b""):
        self.payload = payload

    def __reduce__(self):
        return (rebuild, (len(self.payload), self.payload))


def pid():
    return os.getpid()
