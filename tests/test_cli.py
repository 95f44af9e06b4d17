"""The real console script: bad input gets one clear line and exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest

A5 = [sys.executable, "-m", "a5ocr.cli.app"]


def run(*args, cwd=None):
    return subprocess.run([*A5, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["design", "--eps-a", "-0.1"], "--eps-a must be in (0, 1)"),
        (["design", "--eps-a", "1.5"], "--eps-a must be in (0, 1)"),
        (["design", "--eps-d", "0"], "--eps-d must be in (0, 1]"),
        (["design", "--font", "/nonexistent/font.ttf"], "font not found"),
        (["design", "--font", "ocr-b", "--chars", "AB€"], "has no glyph"),
        (["design", "--recipe", "x"], "--recipe must be p or pc"),
        (["design", "--preset", "huge"], "unknown preset"),
        (["design", "--eps-a", "abc"], "Invalid value"),
        (["design", "--threads", "0"], "--threads must be at least 1"),
        (["design", "--crown-k", "0"], "--crown-k must be an integer of at least 1"),
        (["design", "--train-bounds", "exact"], "train_bounds must be mixed or one of"),
        (["robustify", "--preset", "tiny", "--crown-k", "-2"], "--crown-k must be an integer of at least 1"),
        (["robustify", "--preset", "tiny", "--train-bounds", "exact"], "train_bounds must be mixed or one of"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path):
    r = run(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


def test_corrupt_classifier_and_unwritable_out(tmp_path):
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"garbage" * 20)
    r = run("design", "--recipe", "p", "--classifier", str(bad), "--preset", "tiny", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a readable" in r.stderr and "Traceback" not in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run("design", "--preset", "tiny", "--chars", "AB", "--out", str(blocker / "sub"))
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


def test_design_command_runs_and_writes_summary(tmp_path):
    out = tmp_path / "run"
    r = run("design", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.05", "--eval-samples", "3", "--device", "cpu", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["chars"] == "AOo0" and s["samples"] == 12
    assert "certified error" in r.stdout


def test_errors_are_one_line_however_long_and_for_usage_errors_too(tmp_path):
    """The real console script in a narrow terminal: a long A5Error message (a long path) and a
    click usage error (an option value that is no integer) each print one line, exit 2; the
    module form ``python -m a5ocr.cli`` is the same command line."""
    import os

    env = {**os.environ, "COLUMNS": "40"}
    deep = tmp_path / ("a-long-folder-name-" * 6) / "font.ttf"
    for argv, needle in (
        (["design", "--font", str(deep)], str(deep)),
        (["design", "--threads", "x"], "--threads"),
        (["design", "--font", "[red]x[/red].ttf"], "[red]x[/red].ttf"),  # markup in user input is shown as typed
    ):
        for cmd in ([os.path.join(os.path.dirname(sys.executable), "a5ocr")], [sys.executable, "-m", "a5ocr.cli"]):
            p = subprocess.run(cmd + argv, capture_output=True, text=True, env=env, timeout=120)
            lines = [line for line in p.stderr.splitlines() if line.strip()]
            assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (cmd, argv, p.stderr)
            assert needle in lines[0], (argv, lines)
