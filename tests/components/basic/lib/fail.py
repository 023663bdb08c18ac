class UpstreamBroken(Exception):
    pass


def process(msg, cfg, snapshot, ctx):
    raise UpstreamBroken(f"upstream said no to {msg.body.get('what', 'it')}")
