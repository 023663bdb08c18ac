def process(msg, cfg, snapshot, ctx):
    ctx.emit(
        "updateKeys",
        {
            "oauth": {
                "access_token": "fake-access-token-refreshed",
                "refresh_token": cfg["oauth"]["refresh_token"],
                "token_type": "Bearer",
                "expires_in": 3600,
                "scope": "read write",
            }
        },
    )
    ctx.emit("data", {"body": {"refreshed": True, "input": msg.body}})
