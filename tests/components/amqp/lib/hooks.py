import json
from pathlib import Path


def startup(cfg):
    Path(cfg["log"]).open("a").write(json.dumps(["startup"]) + "\n")
    return {"subscription": "sub-1"}


def init(cfg):
    Path(cfg["log"]).open("a").write(json.dumps(["init"]) + "\n")


def shutdown(cfg, data):
    Path(cfg["log"]).open("a").write(json.dumps(["shutdown", data]) + "\n")


def process(msg, cfg, snapshot, ctx):
    return {"body": msg.body}
