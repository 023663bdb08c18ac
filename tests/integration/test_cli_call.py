"""`oarlock call`: local mode as a user runs it, including every bad input of the foundation issue."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import TEST_COMPONENTS, event_lines, run_cli

BASIC = str(TEST_COMPONENTS / "basic")


def write(path: Path, value: object) -> str:
    path.write_text(json.dumps(value) if not isinstance(value, str) else value)
    return str(path)


def call(tmp_path: Path, function: str, *extra: str, stdin: str = "", cfg: object = None):  # type: ignore[no-untyped-def]
    cfg_path = write(tmp_path / "cfg.json", {} if cfg is None else cfg)
    return run_cli(
        ["call", function, "--component", BASIC, "--cfg", cfg_path, "--no-keys", *extra], stdin=stdin, cwd=tmp_path
    )


def test_messages_from_stdin_each_produce_one_json_line_per_event(tmp_path: Path) -> None:
    done = call(tmp_path, "echo", stdin='{"body": {"n": 1}}\n\n{"body": {"n": 2}, "headers": {"h": "v"}}\n')
    assert done.returncode == 0, done.stderr
    lines = event_lines(done.stdout)
    assert [(line["event"], line["input"], line["data"]["body"]["echo"]) for line in lines] == [
        ("data", 0, {"n": 1}),
        ("data", 1, {"n": 2}),
    ]


def test_a_message_file_is_processed_with_msg(tmp_path: Path) -> None:
    msg = write(tmp_path / "msg.json", {"body": {"from": "file"}})
    done = call(tmp_path, "echo", "--msg", msg)
    assert done.returncode == 0
    assert event_lines(done.stdout)[0]["data"]["body"]["echo"] == {"from": "file"}


def test_an_invalid_json_line_is_an_error_event_naming_the_line_and_the_others_still_run(tmp_path: Path) -> None:
    done = call(tmp_path, "echo", stdin='{"body": {"n": 1}}\n{not json\n[1, 2]\n{"body": {"n": 4}}\n')
    assert done.returncode == 1
    lines = event_lines(done.stdout)
    assert [(line["event"], line["input"]) for line in lines] == [("data", 0), ("error", 1), ("error", 2), ("data", 3)]
    assert "input line 2 is not valid JSON" in lines[1]["data"]["message"]
    assert "input line 3 must be a JSON object, got an array" in lines[2]["data"]["message"]
    assert "Traceback" not in done.stderr


def test_a_raising_function_exits_1_with_an_error_event(tmp_path: Path) -> None:
    done = call(tmp_path, "fail", stdin='{"body": {"what": "x"}}\n')
    assert done.returncode == 1
    (line,) = event_lines(done.stdout)
    assert line["event"] == "error" and line["data"]["name"] == "UpstreamBroken"


def test_an_unknown_event_is_reported_as_an_error_event(tmp_path: Path) -> None:
    done = call(tmp_path, "emit_unknown", stdin="{}\n")
    assert done.returncode == 1
    assert "unknown event 'dataa'" in event_lines(done.stdout)[0]["data"]["message"]


def test_snapshot_changes_persist_across_messages_and_are_written_back(tmp_path: Path) -> None:
    snapshot = write(tmp_path / "snap.json", {"count": 10})
    done = call(tmp_path, "counter", "--snapshot", snapshot, stdin="{}\n{}\n{}\n")
    assert done.returncode == 0, done.stderr
    counts = [line["data"]["count"] for line in event_lines(done.stdout) if line["event"] == "updateSnapshot"]
    assert counts == [11, 12, 13]
    assert json.loads(Path(snapshot).read_text()) == {"count": 13}


def test_concurrency_runs_every_message(tmp_path: Path) -> None:
    stdin = "".join(json.dumps({"body": {"n": i}}) + "\n" for i in range(50))
    done = call(tmp_path, "echo", "--concurrency", "8", stdin=stdin)
    assert done.returncode == 0
    assert sorted(line["data"]["body"]["echo"]["n"] for line in event_lines(done.stdout)) == list(range(50))


def test_an_unreadable_cfg_file_exits_2_with_a_sentence(tmp_path: Path) -> None:
    done = run_cli(["call", "echo", "--component", BASIC, "--cfg", str(tmp_path / "missing.json"), "--no-keys"])
    assert done.returncode == 2
    assert "cannot read cfg file" in done.stderr and "missing.json" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_cfg_file_that_is_not_json_exits_2_naming_the_file(tmp_path: Path) -> None:
    done = call(tmp_path, "echo", cfg="{oops")
    assert done.returncode == 2 and "is not valid JSON" in done.stderr


def test_an_unknown_function_exits_2_listing_the_known_ones(tmp_path: Path) -> None:
    done = call(tmp_path, "nope")
    assert done.returncode == 2
    assert "nope" in done.stderr and "echo" in done.stderr and "Traceback" not in done.stderr


def test_a_broken_component_json_exits_2_with_the_problem(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "component.json").write_text('{"title": "x", "actions": {')
    cfg = write(tmp_path / "cfg.json", {})
    done = run_cli(["call", "a", "--component", str(broken), "--cfg", cfg, "--no-keys"])
    assert done.returncode == 2
    assert "component.json" in done.stderr and "line 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_main_module_exits_2_naming_the_file(tmp_path: Path) -> None:
    comp = tmp_path / "comp"
    comp.mkdir()
    (comp / "component.json").write_text(
        json.dumps(
            {
                "title": "t",
                "actions": {"a": {"title": "A", "main": "lib/actions/missing.py", "metadata": {"in": {}}}},
            }
        )
    )
    cfg = write(tmp_path / "cfg.json", {})
    done = run_cli(["call", "a", "--component", str(comp), "--cfg", cfg, "--no-keys"])
    assert done.returncode == 2
    assert "lib/actions/missing.py" in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    done = run_cli(["call", "echo", "--component", BASIC])
    assert done.returncode == 2 and "--cfg" in done.stderr
