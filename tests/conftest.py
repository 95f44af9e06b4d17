import os
import subprocess
import sys

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


def tiny_scan_run(tmp_path_factory, name: str, chars: str):
    """A tiny design run of ``chars`` on a 32 px canvas (the scan tests' run), in a fresh folder."""
    from a5ocr.training.design import DesignConfig, run_design  # local: torch-heavy, only for the scan tests

    out = tmp_path_factory.mktemp(name) / "run"
    run_design(DesignConfig(font="comic-neue", chars=chars, preset="tiny", resolution=32, eps_a=0.02, samples_per_char=5,
                            device="cpu", certify_methods=("ibp",), out=str(out), stage1_steps=60, stage2_steps=30))
    return out


def exported_ttf(run):
    """The run's robust font exported as ``RUN/a5.ttf``."""
    from a5ocr.export import export_font  # local: only for the scan tests

    path = run / "a5.ttf"
    export_font(run, path)
    return path


# --------------------------------------------------------------------- shared design runs
# Design runs that several test files read with the same settings, trained once per session.
# Read only: a test that changes a run works on a copy (shutil.copytree).


# The tiny preset's design of 4 characters at eps_A 0.05, IBP certificates (tiny_preset_run).
TINY_DESIGN = dict(font="comic-neue", chars="AOo0", preset="tiny", eps_a=0.05, samples_per_char=5, device="cpu",
                   certify_methods=("ibp",))


@pytest.fixture(scope="session")
def gray_design_run(tmp_path_factory):
    """A tiny gray A5/PC design of Comic Neue (a CFF source), 4 characters, 32x32, fewer steps
    than the tiny preset (seconds); eps_A 0.01 keeps the certified error inside (0, 1) so that
    comparisons of it mean something. Read by the export, font-export and interchange tests."""
    from a5ocr.training.design import DesignConfig, run_design  # local: torch-heavy, only for the tests that train

    out = tmp_path_factory.mktemp("gray_design") / "run"
    run_design(DesignConfig(font="comic-neue", chars="AOo0", preset="tiny", resolution=32, ink="gray", eps_a=0.01,
                            stage1_steps=20, warmup=2, ramp=6, stage2_steps=10, samples_per_char=2, device="cpu",
                            certify_methods=("ibp",), out=str(out)))
    return out


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


@pytest.fixture(scope="session")
def tiny_preset_run(tmp_path_factory):
    """The design run of TINY_DESIGN: the tiny preset itself (16x16, its own schedule).
    Read by the evaluation and certify-range tests."""
    from a5ocr.training.design import DesignConfig, run_design  # local: torch-heavy, only for the tests that train

    out = tmp_path_factory.mktemp("tiny_preset") / "run"
    run_design(DesignConfig(**TINY_DESIGN, out=str(out)))
    return out


# The one real ``design`` process of the suite (a short schedule on one torch thread: what is
# checked is the command, its output and its run folder, not the training). 26 stage-1 steps:
# one periodic progress line (the log every 25 steps) before the stage's last.
DESIGN_CLI = ["design", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.05", "--steps", "26", "--design-steps", "4",
              "--eval-samples", "3", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="session")
def design_process(tmp_path_factory):
    """``python -m a5ocr.cli.app design DESIGN_CLI --out DIR/run > DIR/run.log 2> DIR/err.log``, as
    a user's ``> run.log`` does, with a progress line at every update: (exit code, DIR). Read by
    the CLI tests (the command runs and writes its summary) and the progress tests (the lines)."""
    from a5ocr.cli import progress  # local: only the name of its environment variable

    tmp = tmp_path_factory.mktemp("design_process")
    env = {**os.environ, progress.SECONDS_ENV: "0"}
    with open(tmp / "run.log", "w") as out, open(tmp / "err.log", "w") as err:
        r = subprocess.run([sys.executable, "-m", "a5ocr.cli.app", *DESIGN_CLI, "--out", str(tmp / "run")], stdout=out,
                           stderr=err, env=env, timeout=300)
    return r.returncode, tmp
