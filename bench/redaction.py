"""Redaction by value: the cost of registering a secret and of redacting a log line. Prints a markdown table.

    .venv/bin/python bench/redaction.py [--sizes 5000 20000] [--line-bytes 2048] [--repeat 200]

Values are token-like: half JWT-shaped (~240 characters, all sharing the ``eyJhbGciOi…`` header),
half opaque (43 characters). For each size N of the registry:

- one addition with N values registered: the median over ``--repeat`` additions (and, for
  "after", the same with the tokens at their bound, each addition evicting the oldest);
- redacting a log line of ``--line-bytes`` characters that holds one registered value, with N
  values registered: the median over ``--repeat`` redactions.

"before" is the registry as it was: one regex of every value, longest first, recompiled at every
addition (and it kept only the newest 5,000 values: for N above 5,000 the figure is that of the
same design without its cap, what holding N values that way costs). Its figures are from fewer
repeats (``--before-repeat``): one addition at 20,000 values takes seconds. "after" is
:class:`oarlock.redact.SecretRegistry`.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import statistics
import time
from collections.abc import Callable

from oarlock.redact import MASK, SecretRegistry


def token(index: int) -> str:
    if index % 2:
        claims = base64.urlsafe_b64encode(json.dumps({"sub": f"user-{index}", "jti": secrets.token_hex(16)}).encode())
        return "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9." + claims.decode().rstrip("=") + "." + secrets.token_urlsafe(96)
    return secrets.token_urlsafe(32)


class RegexRegistry:
    """The previous design: every value in one alternation, longest first, compiled again at each addition."""

    def __init__(self, values: list[str]) -> None:
        self.values = dict.fromkeys(values)
        self.pattern = self._compile()

    def _compile(self) -> re.Pattern[str]:
        return re.compile("|".join(re.escape(v) for v in sorted(self.values, key=len, reverse=True)))

    def add(self, value: str) -> None:
        self.values[value] = None
        self.pattern = self._compile()

    def sub(self, text: str) -> str:
        return self.pattern.sub(MASK, text)


def median_seconds(action: Callable[[int], object], repeat: int) -> float:
    times = []
    for index in range(repeat):
        started = time.perf_counter()
        action(index)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def log_line(secret: str, size: int) -> str:
    head = (
        f"2024-05-01T10:00:00.000Z error oarlock.credentials: GET https://api.example.com/v1/me -> 401 token {secret} "
    )
    filler = "request_id=7f3e2a status=401 elapsed_ms=112 retry=1 account=acct-42 the API said: invalid token; "
    return (head + filler * (size // len(filler) + 1))[:size]


def fmt(seconds: float) -> str:
    if seconds >= 0.001:
        return f"{seconds * 1000:,.1f} ms"
    return f"{seconds * 1_000_000:,.1f} µs"


def measure(size: int, *, line_bytes: int, repeat: int, before_repeat: int) -> list[str]:
    """The table rows for a registry of ``size`` values."""
    values = [token(i) for i in range(size)]
    extra = [token(size + i) for i in range(repeat + before_repeat)]
    line = log_line(values[size // 3], line_bytes)

    after = SecretRegistry(max_tokens=size + len(extra))
    for value in values:
        after.add_token(value)
    assert values[size // 3] not in after.sub(line) and MASK in after.sub(line)
    add_after = median_seconds(lambda i: after.add_token(extra[i]), repeat)

    full = SecretRegistry(max_tokens=size)
    for value in values:
        full.add_token(value)
    evict_after = median_seconds(lambda i: full.add_token(extra[i]), repeat)
    assert full.counts()["tokens"] == size

    before = RegexRegistry(values)
    assert before.sub(line) == after.sub(line)
    add_before = median_seconds(lambda i: before.add(extra[repeat + i]), before_repeat)

    sub_after = median_seconds(lambda i: after.sub(line), repeat)
    sub_before = median_seconds(lambda i: before.sub(line), before_repeat)
    return [
        f"| {size:,} | one addition | {fmt(add_before)} | {fmt(add_after)} | {add_before / add_after:,.0f}x |",
        f"| {size:,} | one addition, tokens at their bound (evicts the oldest) | — | {fmt(evict_after)} | |",
        f"| {size:,} | redact a {line_bytes:,}-byte line | {fmt(sub_before)} | {fmt(sub_after)} "
        f"| {sub_before / sub_after:,.0f}x |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--line-bytes", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--before-repeat", type=int, default=3)
    args = parser.parse_args()

    print(
        "| registered values | measure | before (one regex, recompiled per addition) | after (SecretRegistry) | ratio |"
    )
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        rows = measure(size, line_bytes=args.line_bytes, repeat=args.repeat, before_repeat=args.before_repeat)
        print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
