"""``a5ocr reproduce --table 9`` on the tiny preset: four rows, table files, invariants, resume."""

import json
import time

import pytest

from a5ocr.evaluation import EvaluateError
from a5ocr.training.reproduce import ROWS, ReproduceConfig, reproduce


TINY = dict(preset="tiny", chars="AOo0", eps_a=0.05, samples_per_char=4, attack="fast", device="cpu")


def test_table9_tiny_rows_files_invariants_and_resume(tmp_path, a5ocr_main):
    out = tmp_path / "t9"
    rec = reproduce(ReproduceConfig(**TINY, out=str(out)))
    assert [r["key"] for r in rec["rows"]] == list(ROWS)
    for name in ("table9.md", "table9.json", "eval-vanilla.json", "eval-crown-ibp.json", "eval-a5p.json", "eval-a5pc.json"):
        assert (out / name).is_file(), name
    for run in ("a5pc", "a5p", "vanilla"):
        assert (out / run / "summary.json").is_file()
    on_disk = json.loads((out / "table9.json").read_text())
    assert on_disk["rows"] == rec["rows"] and on_disk["consistency"]["ok"]
    samples = {json.loads((out / f"eval-{k}.json").read_text())["samples"] for k in ROWS}
    assert samples == {16}  # one protocol: the same number of samples (and seed) for every row
    seeds = {json.loads((out / f"eval-{k}.json").read_text())["seed"] for k in ROWS}
    assert len(seeds) == 1
    for r in rec["rows"]:
        assert 0 <= r["clean_error"] <= r["attack_error"] <= r["certified_error"] <= r["certified_error_ibp"] <= 1, r
        assert r["broken_certificates"] == 0 and r["consistent"]
        assert r["paper"]["certified_error"] > 0 and r["eval_seconds"] >= 0
    rows = {r["key"]: r for r in rec["rows"]}
    assert rows["vanilla"]["glyphs"] == rows["crown-ibp"]["glyphs"] == "original"
    assert rows["crown-ibp"]["classifier"].endswith("a5pc/baseline_classifier.safetensors")
    assert rows["a5p"]["glyphs"] == rows["a5pc"]["glyphs"] == "robust"
    md = (out / "table9.md").read_text()
    assert "0.89% [100.00%]" in md and "0.73% [4.20%]" in md and "Machine:" in md
    # the tiny preset's stage 1 is IBP-trained: its row and the protocol line say so
    assert rows["crown-ibp"]["label"] == "certified classifier trained with IBP bounds"
    assert [rows[k]["train_bounds"] for k in ROWS] == [None, "ibp", "ibp", "ibp"]
    assert "CROWN-IBP classifier" not in md and "trained with IBP bounds (the paper: the CROWN-IBP/IBP mix)" in md
    assert rec["protocol"]["stage1"]["perspective_p"] == 0.99 and rec["protocol"]["stage1"]["arch"] == "tiny"

    # resumable: nothing is trained or evaluated again
    t0 = time.monotonic()
    again = reproduce(ReproduceConfig(**TINY, out=str(out)))
    assert time.monotonic() - t0 < 10
    for a, b in zip(again["rows"], rec["rows"]):
        assert {k: v for k, v in a.items() if k not in ("train_seconds", "train_note")} == \
               {k: v for k, v in b.items() if k not in ("train_seconds", "train_note")}

    # the command line on the finished folder: reads everything back and prints the table
    code, out_txt, err = a5ocr_main("reproduce", "--preset", "tiny", "--chars", "AOo0", "--eps-a", "0.05",
                              "--samples-per-char", "4", "--attack", "fast", "--device", "cpu", "--out", out)
    assert code == 0, err
    assert "A5/PC" in out_txt and "table9.md" in out_txt

    # other settings in the same folder are refused
    with pytest.raises(EvaluateError, match="other settings"):
        reproduce(ReproduceConfig(**{**TINY, "eps_a": 0.07}, out=str(out)))


def test_only_table_9_and_bad_options(tmp_path, a5ocr_main):
    with pytest.raises(EvaluateError, match="only Table 9"):
        reproduce(ReproduceConfig(table=8, out=str(tmp_path / "x")))
    with pytest.raises(EvaluateError, match="--eps-a"):
        reproduce(ReproduceConfig(eps_a=1.2, out=str(tmp_path / "x")))
    with pytest.raises(EvaluateError, match="--attack"):
        reproduce(ReproduceConfig(attack="strong", out=str(tmp_path / "x")))
    code, out, err = a5ocr_main("reproduce", "--table", "8", "--out", tmp_path / "y")
    assert code == 2 and "only Table 9" in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "y").exists()
