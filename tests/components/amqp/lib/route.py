def process(msg, cfg, snapshot, ctx):
    return {"body": msg.body, "headers": {"X-EIO-Routing-Key": msg.body["to"]}}
