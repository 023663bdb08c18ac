import json
from pathlib import Path


def _record(cfg, entry):
    with Path(cfg["log"]).open("a") as log:
        log.write(json.dumps(entry) + "\n")


def startup(cfg):
    _record(cfg, ["startup"])
    return {"subscription": "sub-1"}


def init(cfg):
    _record(cfg, ["init"])


def shutdown(cfg, data):
    _record(cfg, ["shutdown", data])


def process(msg, cfg, snapshot, ctx):
    return {"body": msg.body}
