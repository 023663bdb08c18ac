def process(msg, cfg, snapshot, ctx):
    return {"body": msg.body}
