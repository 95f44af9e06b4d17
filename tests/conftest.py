import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _threads():
    # One torch thread for the whole session (module-scoped fixtures included): on a 2-core
    # machine shared with other work, two threads make small nets many times slower
    # (measured: 115 ms vs 0.7 ms for a tiny backward pass under load).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def a5ocr_main(monkeypatch, capsys):
    """The console entry point in this process: ``a5ocr_main(*argv) -> (exit code, stdout, stderr)``."""
    import a5ocr.cli.app as app

    def run(*argv):
        monkeypatch.setattr(sys, "argv", ["a5ocr", *map(str, argv)])
        try:
            app.main()
            code = 0
        except SystemExit as ex:
            code = ex.code
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return run


# --------------------------------------------------------------------- shared design runs
# Design runs that several test files read with the same settings, trained once per session, in
# the background (below: gray_design_run, tiny_preset_run, scan_run, split_run, scan_run_s2).
# Read only: a test that changes a run works on a copy (shutil.copytree).

# The tiny preset's design of 4 characters at eps_A 0.05, IBP certificates (tiny_preset_run).
TINY_DESIGN = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=5, device="cpu",
                   certify_methods=("ibp",))
# A tiny gray A5/PC design of Comic Neue (a CFF source), 4 characters, 32x32, fewer steps than
# the tiny preset (seconds); eps_A 0.01 keeps the certified error inside (0, 1) so that
# comparisons of it mean something (gray_design_run: the export, font-export and interchange tests).
GRAY_DESIGN = dict(font="comic-neue", chars="AOo0", preset="tiny", resolution=32, ink="gray", eps_a=0.01, stage1_steps=20,
                   warmup=2, ramp=6, stage2_steps=10, samples_per_char=2, device="cpu", certify_methods=("ibp",))
# The scan tests' runs: a tiny design on a 32 px canvas, with its robust font exported as RUN/a5.ttf.
SCAN_CHARS, SPLIT_CHARS = "ABCDEFGH", "FKPVWbfm"  # scan_run (tests/test_scan.py), split_run (test_scan_split.py)
SCAN_DESIGN = dict(font="comic-neue", preset="tiny", resolution=32, eps_a=0.02, samples_per_char=5, device="cpu",
                   certify_methods=("ibp",), stage1_steps=60, stage2_steps=30)
# A tiny design at print scale 2 made by the real CLI: glyphs 64x64 (print), classifier 32x32 (sensor).
SCAN_S2_CLI = ["design", "--font", "comic-neue", "--chars", SCAN_CHARS, "--preset", "tiny", "--resolution", "32",
               "--print-scale", "2", "--eps-a", "0.02", "--steps", "60", "--design-steps", "30", "--eval-samples", "5",
               "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="session")
def gray_design_font(gray_design_run, tmp_path_factory):
    """``gray_design_font(suffix) -> (path, info)``: ``export_font(gray_design_run, ...)`` with its
    defaults, once per suffix (.ttf, .otf) for the session; what export_font returned with it.
    Read only: the tests that read an exported font with the default options check their
    properties of this one file instead of exporting it again."""
    from a5ocr.export import export_font  # local: only for the tests that read an exported font

    folder = tmp_path_factory.mktemp("gray_design_font")
    fonts: dict[str, tuple] = {}

    def font(suffix: str):
        if suffix not in fonts:
            path = folder / f"robust{suffix}"
            fonts[suffix] = (path, export_font(gray_design_run, path))
        return fonts[suffix]

    return font


# ----------------------------------------------------------- real processes in the background
# The suite runs on one torch thread, so on a 2-core machine the second core idles. The real
# processes of the suite (a whole ``design`` command line, the torchrun one, the console-script
# errors) run there instead: when the collection ends, one background thread runs those that a
# collected test needs, one process (one torchrun) at a time, in the order the tests need them,
# while the other tests run here; their fixtures wait for them. The same command lines and the
# same checks, only earlier.

# The one real ``design`` process of the suite (a short schedule on one torch thread: what is
# checked is the command, its output and its run folder, not the training). 26 stage-1 steps:
# one periodic progress line (the log every 25 steps) before the stage's last.
DESIGN_CLI = ["design", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.05", "--steps", "26", "--design-steps", "4",
              "--eval-samples", "3", "--device", "cpu", "--threads", "1"]
# The torchrun command line (tests/test_distributed.py) trains long enough to learn (the pre-move
# fixture's schedule): its summary then compares figures well away from chance (75% error for
# 4 characters) with a one-process run's.
TORCHRUN_CLI = ["design", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.02", "--steps", "150", "--design-steps",
                "60", "--warmup", "5", "--ramp", "10", "--eval-samples", "25", "--device", "cpu", "--threads", "1"]

_running: set = set()  # the background process running now (killed if the session ends first)
_stopping = threading.Event()


def _process(cmd, timeout: float, **kw) -> tuple[int, str, str]:
    """Run ``cmd`` to its end in the background thread: (exit code, stdout, stderr)."""
    if _stopping.is_set():
        raise RuntimeError("the session ended before this background process started")
    proc = subprocess.Popen(cmd, text=True, **kw)
    _running.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        _running.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, out, err


def _run_design(folder):
    """``python -m a5ocr.cli.app design DESIGN_CLI --out DIR/run > DIR/run.log 2> DIR/err.log``: (exit code, DIR)."""
    from a5ocr.cli import progress  # local: only the name of its environment variable

    env = {**os.environ, progress.SECONDS_ENV: "0"}
    with open(folder / "run.log", "w") as out, open(folder / "err.log", "w") as err:
        code, _, _ = _process([sys.executable, "-m", "a5ocr.cli.app", *DESIGN_CLI, "--out", str(folder / "run")], 300,
                              stdout=out, stderr=err, env=env)
    return code, folder


def _run_torchrun(folder):
    """``torchrun --standalone --nproc-per-node 2 -m a5ocr.cli TORCHRUN_CLI --out DIR/parent/run``
    (the run in a parent folder of its own): (exit code, the run folder, stdout and stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "A5OCR_PROGRESS_SECONDS": "0"}
    (folder / "parent").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "a5ocr.cli",
           *TORCHRUN_CLI, "--out", str(folder / "parent" / "run")]
    code, out, _ = _process(cmd, 400, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    return code, folder / "parent" / "run", out


def _console_error_cases(folder):
    """(command, argv, what the one error line names) of the console-script error checks
    (tests/test_cli.py): a long A5Error message (a long path) through the script and the module
    form ``python -m a5ocr.cli``; a click usage error; markup in user input; evaluate on a missing
    run folder and scan of a page that is no image (a real run folder: the pre-move fixture's)
    through ``python -m a5ocr.cli.app``."""
    deep = folder / ("a-long-folder-name-" * 6) / "font.ttf"
    (folder / "x.png").write_text("text")
    fixture_run = Path(__file__).parent / "fixtures" / "premove" / "design"
    script, module = [os.path.join(os.path.dirname(sys.executable), "a5ocr")], [sys.executable, "-m", "a5ocr.cli"]
    app_module = [sys.executable, "-m", "a5ocr.cli.app"]
    return [(cmd, argv, needle) for argv, needle, commands in (
        (["design", "--font", str(deep)], str(deep), (script, module)),
        (["design", "--threads", "x"], "--threads", (script,)),
        (["design", "--font", "[red]x[/red].ttf"], "[red]x[/red].ttf", (script,)),  # shown as typed
        (["evaluate", str(folder / "nope")], "run folder not found", (app_module,)),
        (["scan", str(folder / "x.png"), "--run", str(fixture_run)], "not an image", (app_module,)),
    ) for cmd in commands]


def _run_console_errors(folder):
    """[(command, argv, needle, exit code, stdout, stderr)]: each case its own process, in a
    narrow terminal (COLUMNS 40)."""
    env = {**os.environ, "COLUMNS": "40"}
    return [(cmd, argv, needle, *_process(cmd + argv, 120, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
            for cmd, argv, needle in _console_error_cases(folder)]


def _run_refused_under_torchrun(folder):
    """tests/test_torchrun_guard.py's export and robustify command lines (``python -m a5ocr.cli``,
    as torchrun starts it) under torchrun's environment, in ``folder`` (which must stay empty):
    ([(command name, exit code, stdout, stderr)], folder)."""
    from test_torchrun_guard import TORCHRUN_ENV, _commands  # local: the test module's own command lines

    env = {**os.environ, **TORCHRUN_ENV}
    return [(name, *_process([sys.executable, "-m", "a5ocr.cli", *_commands(folder)[name]], 120, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, cwd=folder))
            for name in ("export", "robustify")], folder


def _library_design(config: dict, font: bool = False):
    """The job: ``run_design(DesignConfig(**config, out=DIR/run))`` in a Python process of its own
    on one torch thread (and, with ``font``, ``export_font(DIR/run, DIR/run/a5.ttf)``): DIR/run."""

    def run(folder):
        out = folder / "run"
        code = ("import torch\ntorch.set_num_threads(1)\nfrom a5ocr.training.design import DesignConfig, run_design\n"
                f"run_design(DesignConfig(**{config!r}, out={str(out)!r}))\n")
        if font:
            code += f"from a5ocr.export import export_font\nexport_font({str(out)!r}, {str(out / 'a5.ttf')!r})\n"
        rc, _, err = _process([sys.executable, "-c", code], 600, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert rc == 0, err[-3000:]
        return out

    return run


def _cli_design(argv):
    """The job: ``python -m a5ocr.cli.app *argv --out DIR/run``: DIR/run."""

    def run(folder):
        out = folder / "run"
        rc, stdout, err = _process([sys.executable, "-m", "a5ocr.cli.app", *argv, "--out", str(out)], 600,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert rc == 0, (stdout + err)[-3000:]
        return out

    return run


# fixture name -> the function that runs its process (or processes) in a fresh folder
_BACKGROUND = {"design_process": _run_design, "torchrun_process": _run_torchrun, "console_errors": _run_console_errors,
               "refused_under_torchrun": _run_refused_under_torchrun,
               "gray_design_run": _library_design(GRAY_DESIGN), "tiny_preset_run": _library_design(TINY_DESIGN),
               "scan_run": _library_design({**SCAN_DESIGN, "chars": SCAN_CHARS}, font=True),
               "split_run": _library_design({**SCAN_DESIGN, "chars": SPLIT_CHARS}, font=True),
               "scan_run_s2": _cli_design(SCAN_S2_CLI)}
_jobs: dict = {}  # fixture name -> {"done": Event, "result": ..., "error": ...}


def _run_jobs(todo) -> None:
    for name, run, folder in todo:
        job = _jobs[name]
        try:
            job["result"] = run(folder)
        except BaseException as ex:  # handed to the fixture, which raises it in its test
            job["error"] = ex
        finally:
            job["done"].set()


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    first_use = {}
    for index, item in enumerate(session.items):
        for name in getattr(item, "fixturenames", ()):
            if name in _BACKGROUND:
                first_use.setdefault(name, index)
    todo = []
    for name in sorted(first_use, key=first_use.get):
        _jobs[name] = {"done": threading.Event()}
        # pytest's own temporary folders (config._tmp_path_factory is what tmp_path_factory returns)
        todo.append((name, _BACKGROUND[name], session.config._tmp_path_factory.mktemp(name)))
    if todo:
        threading.Thread(target=_run_jobs, args=(todo,), daemon=True).start()


def pytest_sessionfinish(session):
    _stopping.set()  # a run stopped early (-x, Ctrl-C): no process left behind
    for proc in list(_running):
        proc.kill()


def _background(name: str):
    """The result of the background job of fixture ``name``, once it has ended (the jobs before
    it included)."""
    job = _jobs[name]
    assert job["done"].wait(timeout=1200), f"background job {name} did not end"
    if "error" in job:
        raise job["error"]
    return job["result"]


@pytest.fixture(scope="session")
def design_process():
    """The real ``design`` process of DESIGN_CLI, stdout and stderr redirected to DIR/run.log and
    DIR/err.log as a user's ``> run.log`` does, with a progress line at every update: (exit code,
    DIR). Read by the CLI tests (the command runs and writes its summary) and the progress tests
    (the lines)."""
    return _background("design_process")


@pytest.fixture(scope="session")
def console_errors():
    """[(command, argv, needle, exit code, stdout, stderr)] of the console-script error cases."""
    return _background("console_errors")


@pytest.fixture(scope="session")
def refused_under_torchrun():
    """([(command name, exit code, stdout, stderr)], the folder they ran in) of the commands
    refused under torchrun's environment (tests/test_torchrun_guard.py)."""
    return _background("refused_under_torchrun")


@pytest.fixture(scope="session")
def torchrun_process():
    """The 2-process torchrun run of TORCHRUN_CLI: (exit code, the run folder, both processes'
    output); the run folder alone in its parent folder."""
    return _background("torchrun_process")


@pytest.fixture(scope="session")
def gray_design_run():
    """The run folder of GRAY_DESIGN."""
    return _background("gray_design_run")


@pytest.fixture(scope="session")
def tiny_preset_run():
    """The run folder of TINY_DESIGN: the tiny preset itself (16x16, its own schedule). Read by
    the evaluation and certify-range tests."""
    return _background("tiny_preset_run")


@pytest.fixture(scope="session")
def scan_run():
    """The run folder of SCAN_DESIGN on SCAN_CHARS, its font RUN/a5.ttf (tests/test_scan.py)."""
    return _background("scan_run")


@pytest.fixture(scope="session")
def split_run():
    """The run folder of SCAN_DESIGN on SPLIT_CHARS, its font RUN/a5.ttf (tests/test_scan_split.py)."""
    return _background("split_run")


@pytest.fixture(scope="session")
def scan_run_s2():
    """The run folder of the real CLI's SCAN_S2_CLI (print scale 2; tests/test_scan.py)."""
    return _background("scan_run_s2")
