def process(msg, cfg, snapshot):
    return {"body": {"cfg_keys": sorted(cfg), "snapshot": snapshot}}
