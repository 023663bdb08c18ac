def process(msg, cfg, snapshot, ctx):
    return {"body": {"echo": msg.body, "headers": msg.headers}}


def getMetaModel(cfg):
    return {"in": {"type": "object", "properties": {"field": {"type": "string", "title": cfg.get("label", "F")}}}}


def listThings(cfg):
    return {"a": "Thing A", "b": "Thing B"}
