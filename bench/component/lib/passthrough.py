def process(msg, cfg, snapshot, ctx):
    return msg
