"""Waits until the test releases it, then emits: for the per-message time limit."""

import threading

RELEASE = threading.Event()
DONE = threading.Event()


def process(msg, cfg, snapshot, ctx):
    RELEASE.wait(30)
    try:
        if msg.body.get("update"):  # what a refresh that outlived the time limit emits
            ctx.emit("updateKeys", {"oauth": {"access_token": "at-late", "refresh_token": "rt-late"}})
        ctx.emit("data", {"body": {"late": True}})
    finally:
        DONE.set()
