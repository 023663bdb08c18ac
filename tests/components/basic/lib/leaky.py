def process(msg, cfg, snapshot, ctx):
    token = cfg["oauth"]["access_token"]
    ctx.logger.info("calling the API with %s", token)
    raise RuntimeError(f"API refused Authorization: Bearer {token} (refresh {cfg['oauth']['refresh_token']})")
