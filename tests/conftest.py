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
