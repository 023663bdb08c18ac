class IntentionalError(Exception):
    pass


def process(msg, cfg, snapshot, ctx):
    raise IntentionalError("sailor_peer intentional failure")
