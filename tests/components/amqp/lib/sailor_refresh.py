"""A component written the sailor way: it refreshes by hand on a 401 and emits updateKeys {"oauth": new_token}.

Careful as a good sailor component is at concurrency > 1: one refresh at a time in the process, and a
401 for a token another message already replaced is answered with the newer token, not a second refresh.
"""

import threading

import requests

_lock = threading.Lock()
_latest = {}


def _refresh(cfg, refresh_token):
    settings = cfg["oauth2"]
    answer = requests.post(
        settings["token_uri"],
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": settings["client_id"],
            "client_secret": settings["client_secret"],
        },
        timeout=30,
    )
    answer.raise_for_status()
    return answer.json()


def process(msg, cfg, snapshot, ctx):
    token = cfg["oauth"]["access_token"]
    for _attempt in range(3):
        answer = requests.get(cfg["baseUrl"] + "/api/me", headers={"Authorization": "Bearer " + token}, timeout=30)
        if answer.status_code != 401:
            break
        with _lock:
            known = _latest.get("oauth")
            if known is not None and known["access_token"] != token:
                token = known["access_token"]  # another message refreshed meanwhile
                continue
            newest = cfg["oauth"] if known is None else known
            fresh = _refresh(cfg, newest.get("refresh_token") or cfg["oauth"]["refresh_token"])
            _latest["oauth"] = {**newest, **fresh}
            ctx.emit("updateKeys", {"oauth": fresh})
            token = fresh["access_token"]
    answer.raise_for_status()
    return {"body": {"n": msg.body.get("n"), "me": answer.json()["subject"]}}
