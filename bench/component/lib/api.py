def process(msg, cfg, snapshot, ctx):
    answer = ctx.http.get(f"{cfg['baseUrl']}/api/me", timeout=30)
    answer.raise_for_status()
    return {"body": {"me": answer.json()["subject"]}}
