import pytest
import torch

from a5ocr import models


@pytest.mark.parametrize("arch,res", [("paper", 128), ("paper", 32), ("cpu", 32), ("cpu", 64), ("tiny", 16)])
def test_shapes(arch, res):
    m = models.build(arch, res, 62)
    assert m(torch.rand(2, 3, res, res)).shape == (2, 62)


def test_paper_net_matches_reference_layout():
    m = models.paper_net(128, 62)
    convs = [l for l in m if isinstance(l, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 64, 5, 2), (64, 32, 5, 2), (32, 16, 3, 2), (16, 8, 3, 2)]
    lin = [l for l in m if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(512, 512), (512, 62)]


def test_checkpoint_round_trip(tmp_path):
    m = models.build("tiny", 16, 4)
    p = tmp_path / "c.safetensors"
    models.save_classifier(m, p, arch="tiny", resolution=16, chars="ABCD")
    m2, meta = models.load_classifier(p)
    assert meta == {"arch": "tiny", "resolution": 16, "chars": "ABCD"}
    x = torch.rand(3, 3, 16, 16)
    assert torch.equal(m(x), m2(x))
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_bad_checkpoints(tmp_path):
    with pytest.raises(models.CheckpointError, match="not found"):
        models.load_classifier(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(models.CheckpointError, match="not a readable"):
        models.load_classifier(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(models.CheckpointError, match="not an a5ocr classifier"):
        models.load_classifier(foreign)
    # a truncated real checkpoint
    good = tmp_path / "good.safetensors"
    models.save_classifier(models.build("tiny", 16, 4), good, arch="tiny", resolution=16, chars="ABCD")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(models.CheckpointError):
        models.load_classifier(cut)
