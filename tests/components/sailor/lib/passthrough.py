def process(msg, cfg, snapshot, ctx):
    ctx.emit("data", {"body": msg.body})
