CALLS = []


def init(cfg):
    CALLS.append(("init", cfg.get("marker")))


def startup(cfg):
    CALLS.append(("startup", cfg.get("marker")))
    return {"webhook": "created"}


def shutdown(cfg, data):
    CALLS.append(("shutdown", data))


def process(msg, cfg, snapshot, ctx):
    return {"body": {"calls": [list(c) for c in CALLS]}}
