"""Fails in the ways a poison input can make a function fail (``kind`` in the body)."""

import threading


class Abort(BaseException):
    pass


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


def process(msg, cfg, snapshot, ctx):
    kind = msg.body.get("kind")
    if kind == "exit":
        raise SystemExit(3)
    if kind == "abort":
        raise Abort("stop everything")
    if kind == "unprintable":
        raise Unprintable()
    if kind == "bad-snapshot":
        ctx.emit("updateSnapshot", {"lock": threading.Lock()})
        return {"body": {"after": "the bad snapshot"}}
    return {"body": {"snapshot": snapshot}}
