import itertools

_n = itertools.count()


def process(msg, cfg, snapshot, ctx):
    """One updateKeys per message, the sailor way, then the body as data."""
    n = next(_n)
    ctx.emit("updateKeys", {"oauth": {"access_token": f"bench-access-{n}", "refresh_token": f"bench-refresh-{n}"}})
    return {"body": msg.body}
