"""Waits until the test releases it, then emits: for the per-message time limit."""

import threading

RELEASE = threading.Event()
DONE = threading.Event()


def process(msg, cfg, snapshot, ctx):
    RELEASE.wait(30)
    try:
        ctx.emit("data", {"body": {"late": True}})
    finally:
        DONE.set()
