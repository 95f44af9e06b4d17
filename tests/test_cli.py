"""Bad input gets one clear line and exit code 2, no traceback: each message through the entry
point ``a5ocr.cli.app.main`` in this process (the ``a5ocr_main`` fixture), and the real console
script (``a5ocr``, ``python -m a5ocr.cli``, ``python -m a5ocr.cli.app``) as separate processes.

The message table runs in-process: a subprocess per case paid a fresh torch import each (the
slowest part of the suite) and proved nothing more than the real-process tests below, which run
the same ``main`` behind all three command lines."""

import json

import pytest


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
def test_bad_input_is_one_line_exit_2(args, needle, tmp_path, a5ocr_main):
    code, out, err = a5ocr_main(*args, "--out", tmp_path / "o")
    assert code == 2, err
    assert needle in err + out
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def test_corrupt_classifier_and_unwritable_out(tmp_path, a5ocr_main):
    bad = tmp_path / "c.safetensors"
    bad.write_bytes(b"garbage" * 20)
    code, _, err = a5ocr_main("design", "--recipe", "p", "--classifier", bad, "--preset", "tiny", "--out", tmp_path / "o")
    assert code == 2 and "not a readable" in err and "Traceback" not in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = a5ocr_main("design", "--preset", "tiny", "--chars", "AB", "--out", blocker / "sub")
    assert code == 2 and "cannot write" in err and "Traceback" not in err


def test_design_command_runs_and_writes_summary(design_process):
    """``python -m a5ocr.cli.app design`` in its own process, a short schedule (what is checked is
    the command's run and its summary, not the training) on one torch thread: the session's one
    design process (conftest; its stdout in run.log, also read by the progress tests)."""
    code, tmp = design_process
    assert code == 0, (tmp / "err.log").read_text()[-2000:]
    s = json.loads((tmp / "run" / "summary.json").read_text())
    assert s["chars"] == "AOo0" and s["samples"] == 12
    assert "certified error" in (tmp / "run.log").read_text()


def test_errors_are_one_line_however_long_and_for_usage_errors_too(console_errors):
    """The real console script in a narrow terminal: a long A5Error message (a long path) and a
    click usage error (an option value that is no integer) each print one line, exit 2; the
    module form ``python -m a5ocr.cli`` is the same command line (shown on the long path, the
    case the terminal width could fold: both forms call the same ``main``, so the other messages
    need not be run twice); ``python -m a5ocr.cli.app`` evaluate on a missing run folder and scan
    of a page that is no image (with a real run folder: the pre-move fixture's), the evaluate and
    scan commands' real processes. The cases are conftest's ``_console_error_cases``: their six
    processes run at once, in the background from the end of the collection."""
    assert len(console_errors) == 6
    for cmd, argv, needle, code, _, stderr in console_errors:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (cmd, argv, stderr)
        assert needle in lines[0], (argv, lines)
