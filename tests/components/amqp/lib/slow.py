import time


def process(msg, cfg, snapshot, ctx):
    time.sleep(float(msg.body.get("sleep", 0.2)))
    return {"body": {"n": msg.body.get("n")}}
