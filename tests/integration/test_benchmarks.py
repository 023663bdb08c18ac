"""The benchmarks under bench/ run end to end on a small load and print every figure they promise.

No figure is asserted (speed is for the benchmarks to print, not for tests to time); these tests
keep the benchmarks from rotting: every runner completes, every output was produced, and the
tables have a row with a number for each runner.
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import REPO


def run_bench(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(output: str) -> list[list[str]]:
    rows = []
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


NUMBER = re.compile(r"^[\d,]+(\.\d+)?$")


def test_the_throughput_benchmark_prints_both_pairs_their_ratios_and_the_io_bound_case() -> None:
    output = run_bench(
        "bench/throughput.py", "--messages", "300", "--rounds", "1", "--io-messages", "40", "--keys-messages", "200"
    )
    rows = table_rows(output)
    runners = {(row[0], row[1]) for row in rows if row[0] in ("plaintext", "encrypted")}
    assert ("plaintext", "raw pika (consume, publish, ack after confirm)") in runners
    assert ("plaintext", "oarlock run, concurrency 100 (the default: the prefetch)") in runners
    assert ("encrypted", "raw pika + decrypt, encrypt, sailor headers") in runners
    assert ("encrypted", "oarlock run, concurrency 100 (the default: the prefetch)") in runners
    assert ("encrypted", "oarlock run, concurrency 1") in runners
    assert ("encrypted", "oarlock run, concurrency 100, hot path off (OARLOCK_AMQP_HOT_PATH=off)") in runners
    for row in rows:
        if row[0] in ("plaintext", "encrypted"):
            assert NUMBER.match(row[2]), row
            if row[1].startswith("raw"):
                assert row[3] == "-", row
            else:
                assert NUMBER.match(row[3]), row
    assert re.search(r"^plaintext: oarlock / raw pika per round [\d.]+ \(median [\d.]+\)$", output, re.M)
    assert re.search(r"^encrypted: oarlock / raw pika per round [\d.]+ \(median [\d.]+\)$", output, re.M)
    assert re.search(r"^encrypted oarlock, hot path off / on per round [\d.]+ \(median [\d.]+\)$", output, re.M)
    assert re.search(r"^peak RSS of any oarlock run [\d.]+ MB$", output, re.M)
    keys_rows = {row[0]: row for row in rows if row[0].startswith(("raw pika (the ceiling", "oarlock, updateKeys"))}
    assert sorted(keys_rows) == [
        "oarlock, updateKeys PUT",
        "oarlock, updateKeys over AMQP",
        "raw pika (the ceiling, no update)",
    ]
    assert all(NUMBER.match(row[1]) and NUMBER.match(row[2]) for row in keys_rows.values())
    io_rows = {row[0]: row for row in rows if row[0] in ("1", "16", "64")}
    assert sorted(io_rows) == ["1", "16", "64"]
    assert all(NUMBER.match(row[2]) and float(row[2].replace(",", "")) > 0 for row in io_rows.values())


def test_the_refresh_benchmark_prints_a_row_per_caller_count_and_way_of_refreshing() -> None:
    output = run_bench("bench/refresh.py", "--seconds", "0.5", "--callers", "1", "4")
    rows = table_rows(output)
    ways = {(row[0], row[1]) for row in rows if row[0] in ("1", "4")}
    for callers in ("1", "4"):
        for way in ("oarlock", "refresh before every call", "refresh on 401, uncoordinated"):
            assert (callers, way) in ways, output
