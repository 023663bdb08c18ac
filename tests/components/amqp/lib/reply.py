def process(msg, cfg, snapshot, ctx):
    ctx.emit("httpReply", {"statusCode": 202, "body": {"ok": msg.body}, "headers": {"X-Test": "1"}})
    return {"body": msg.body}
