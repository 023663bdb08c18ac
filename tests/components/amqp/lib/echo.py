def process(msg, cfg, snapshot, ctx):
    return {"body": {"echo": msg.body}, "headers": {"seen": True}}
