def process(msg, cfg, snapshot, ctx):
    count = int(snapshot.get("count", 0)) + 1
    ctx.emit("updateSnapshot", {"count": count})
    if msg.body.get("replace"):
        ctx.emit("snapshot", {"replaced": True})
    return {"body": {"count": count}}
