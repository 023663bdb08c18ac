def process(msg, cfg, snapshot, ctx):
    count = int(snapshot.get("count", 0)) + 1
    ctx.emit("updateSnapshot", {"count": count})
    return {"body": {"count": count}}
