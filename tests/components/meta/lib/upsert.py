"""getMetaModel and select models: what `oarlock meta upsert` and `oarlock select upsert METHOD` call."""


def process(msg, cfg, snapshot, ctx):
    return {"body": {"kind": cfg.get("kind"), "item": cfg.get("item"), "record": msg.body}}


def getMetaModel(cfg):
    """The input schema depends on the kind chosen in the cfg."""
    fields = {"contact": ["name", "email"], "company": ["name", "domain"]}.get(cfg.get("kind", ""), ["name"])
    return {
        "in": {"type": "object", "properties": {f: {"type": "string", "title": f.title()} for f in fields}},
        "out": {"type": "object", "properties": {"id": {"type": "integer"}}},
    }


def listItems(cfg, ctx):
    """The options come from the API, through ctx.http (which keeps the OAuth2 token alive)."""
    response = ctx.http.get(cfg["baseUrl"].rstrip("/") + "/api/items", timeout=10)
    response.raise_for_status()
    return {str(item["id"]): item["name"] for item in response.json()["items"]}


async def listKinds(cfg):
    return {"contact": "Contact", "company": "Company"}


def listBroken(cfg):
    raise RuntimeError(f"the API said no to key {cfg.get('apiKey')}")


def listLeaky(cfg):
    return {"token": cfg["oauth"]["access_token"], "key": "key is " + str(cfg.get("apiKey"))}


def listWrong(cfg):
    return ["contact", "company"]
