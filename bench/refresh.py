"""Token refresh under concurrency: oarlock vs the two ways the seeds refresh by hand. Prints a markdown table.

    .venv/bin/python bench/refresh.py [--seconds 5] [--ttl 1] [--callers 1 16 64]

Against the dev provider with single-use rotating refresh tokens and 10 ms API latency, N
callers share one credential and call GET /api/me for a fixed time:

- oarlock: ctx.http from one CredentialManager (proactive + on-401, single-flight);
- "refresh before every call" (the seed's Outlook way): every call refreshes first;
- "refresh on 401, uncoordinated" (the seed's Salesforce way): call; on 401 refresh and resend once.

Both baselines keep the credential in one shared dict, as a component keeps its cfg.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from oarlock.credentials.auth import authorized_session
from oarlock.credentials.manager import CredentialManager
from oarlock.devprovider import DevProvider
from oarlock.protocol.events import EventList

CLIENT = {"client_id": "oarlock-dev", "client_secret": "oarlock-dev-secret"}


def refresh(provider: DevProvider, credential: dict[str, Any], http: requests.Session) -> bool:
    answer = http.post(
        provider.token_url,
        data={"grant_type": "refresh_token", "refresh_token": credential["refresh_token"], **CLIENT},
        timeout=30,
    )
    if answer.status_code != 200:
        return False
    credential.update(answer.json())
    return True


def outlook_way(provider: DevProvider, credential: dict[str, Any]) -> Callable[[requests.Session], bool]:
    def call(http: requests.Session) -> bool:
        if not refresh(provider, credential, http):
            return False
        me = http.get(
            f"{provider.url}/api/me", headers={"Authorization": f"Bearer {credential['access_token']}"}, timeout=30
        )
        return me.status_code == 200

    return call


def salesforce_way(provider: DevProvider, credential: dict[str, Any]) -> Callable[[requests.Session], bool]:
    def call(http: requests.Session) -> bool:
        me = http.get(
            f"{provider.url}/api/me", headers={"Authorization": f"Bearer {credential['access_token']}"}, timeout=30
        )
        if me.status_code != 401:
            return me.status_code == 200
        if not refresh(provider, credential, http):
            return False
        again = http.get(
            f"{provider.url}/api/me", headers={"Authorization": f"Bearer {credential['access_token']}"}, timeout=30
        )
        return again.status_code == 200

    return call


def oarlock_way(provider: DevProvider, cfg: dict[str, Any]) -> Callable[[requests.Session], bool]:
    manager = CredentialManager()

    def call(_http: requests.Session) -> bool:
        session = authorized_session(manager, manager.newest_cfg(cfg), sink=EventList())
        try:
            return session.get(f"{provider.url}/api/me", timeout=30).status_code == 200
        except Exception:
            return False
        finally:
            session.close()

    return call


def measure(kind: str, callers: int, seconds: float, ttl: float) -> dict[str, Any]:
    with DevProvider(ttl=ttl, rotation="single-use", latency_ms=10) as provider:
        token = provider.mint()
        cfg = {
            "_account": "bench",
            "baseUrl": provider.url,
            "oauth": {**token, "expires_at": time.time() + float(token["expires_in"])},
            "oauth2": {"token_uri": provider.token_url, **CLIENT},
        }
        credential = dict(cfg["oauth"])
        call = {
            "oarlock": lambda: oarlock_way(provider, cfg),
            "refresh before every call": lambda: outlook_way(provider, credential),
            "refresh on 401, uncoordinated": lambda: salesforce_way(provider, credential),
        }[kind]()
        ok, failed = [0], [0]
        lock = threading.Lock()
        deadline = time.monotonic() + seconds

        def work() -> None:
            http = requests.Session()
            while time.monotonic() < deadline:
                success = call(http)
                with lock:
                    (ok if success else failed)[0] += 1

        threads = [threading.Thread(target=work) for _ in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stats = provider.stats()
    return {
        "kind": kind,
        "callers": callers,
        "ok": ok[0],
        "failed": failed[0],
        "token_calls": stats["token_calls"],
        "unauthorized": stats["unauthorized"],
        "invalid_grant": stats["invalid_grant"],
        "rate": ok[0] / seconds,
        "expiries": seconds / ttl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    print(
        f"\n### Refresh under concurrency: single-use rotation, ttl {args.ttl:g} s, {args.seconds:g} s per run, "
        "10 ms API latency\n"
    )
    print("| callers | way | ok requests/s | failed requests | token calls | 401s | invalid_grant |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    for callers in args.callers:
        for kind in ("oarlock", "refresh before every call", "refresh on 401, uncoordinated"):
            row = measure(kind, callers, args.seconds, args.ttl)
            print(
                f"| {callers} | {kind} | {row['rate']:,.0f} | {row['failed']} | {row['token_calls']} | "
                f"{row['unauthorized']} | {row['invalid_grant']} |"
            )


if __name__ == "__main__":
    main()
