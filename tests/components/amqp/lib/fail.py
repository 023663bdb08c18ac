def process(msg, cfg, snapshot, ctx):
    raise ValueError(f"cannot handle {msg.body.get('n')}")
