def process(msg, cfg, snapshot, ctx):
    ctx.emit("dataa", {"body": {}})
