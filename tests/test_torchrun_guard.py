"""Under torchrun (WORLD_SIZE > 1) only ``a5ocr design`` runs: every other command stops at once
with one line and exit 2, before it writes anything (N copies would all write the same files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from a5ocr.errors import A5Error
from a5ocr.training.distributed import refuse_distributed

RUN = Path(__file__).parent / "fixtures" / "premove" / "design"  # a small design run folder
TORCHRUN_ENV = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    """Command lines that write a file or folder (each under ``tmp_path``) when run as one process."""
    return {
        "export": ["export", str(RUN), "--png-dir", str(tmp_path / "pngs")],
        "robustify": ["robustify", "--preset", "tiny", "--out", str(tmp_path / "robust")],
        "render-text": ["render-text", "AB", "--font", "dejavu-sans", "--out", str(tmp_path / "page.png"), "--clean"],
    }


def _refused(name: str, code: int, out: str, err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, (name, code, err)
    assert lines[0].startswith("error: ") and f"a5ocr {name} does not run on several processes" in lines[0]
    assert "only a5ocr design" in lines[0] and out == ""


def test_other_commands_refuse_to_run_on_several_processes(refused_under_torchrun):
    """The real console script (``python -m a5ocr.cli``, as torchrun starts it), two commands at
    once, in a folder of their own (conftest: started in the background as the collection ends)."""
    results, folder = refused_under_torchrun
    assert [name for name, *_ in results] == ["export", "robustify"]
    for name, code, out, err in results:
        _refused(name, code, out, err)
    assert list(folder.iterdir()) == []  # nothing written, not even a folder


def test_a_refused_command_runs_as_one_process(a5ocr_main, monkeypatch, tmp_path):
    """The same command line: refused under WORLD_SIZE 2 (nothing written), run and written under
    WORLD_SIZE 1 (torchrun --nproc-per-node 1 is one process)."""
    argv = _commands(tmp_path)["render-text"]
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    _refused("render-text", *a5ocr_main(*argv))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, _, err = a5ocr_main(*argv)
    assert code == 0, err
    assert (tmp_path / "page.png").stat().st_size > 0


def test_design_passes_the_guard(a5ocr_main, monkeypatch, tmp_path):
    """design is not refused under WORLD_SIZE 2: it reaches its own checks (a bad --eps-a here, so no
    training runs) and says what they say."""
    for key, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(key, value)
    refuse_distributed("design")
    with pytest.raises(A5Error, match="only a5ocr design"):
        refuse_distributed("evaluate")
    code, _, err = a5ocr_main("design", "--eps-a", "-0.1", "--out", tmp_path / "d")
    assert code == 2 and "--eps-a must be in (0, 1)" in err and "several processes" not in err
    assert not (tmp_path / "d").exists()


def test_the_guard_reads_torchruns_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    refuse_distributed("scan")  # no torchrun: one process
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(A5Error, match="WORLD_SIZE 3"):
        refuse_distributed("certify-range")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(A5Error, match="must be integers"):
        refuse_distributed("reproduce")
