def process(msg, cfg, snapshot, ctx):
    ctx.emit("rebound", {"body": {"message": "the API is busy"}})
