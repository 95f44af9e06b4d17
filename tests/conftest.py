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
