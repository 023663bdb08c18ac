def process(msg, cfg, snapshot, ctx):
    ctx.emit("data", {"body": {"n": 1}})
    ctx.emit("snapshot", {"replaced": True})
    ctx.emit("rebound", {"body": {}})
    ctx.emit("httpReply", {"statusCode": 201, "body": "ok", "headers": {}})
    ctx.emit("end")
