"""``a5ocr certify-range``: interval images sound against the real acquisition (10^4 poses per
box, corners and extreme values included), exact source ranges and bilinear ranges, the
splitting search's certificates checked by sampling and the attack, counter-examples that are
real, the figure, the record and bad input (one line, exit 2, nothing written)."""

import json
import math

import pytest
import torch

import a5ocr.certify_range.split as split_module
from a5ocr import bounds
from a5ocr.acquisition import AcquisitionConfig, apply, homography
from a5ocr.certify_range import (
    CertifyRangeError,
    FixedCamera,
    ParamBox,
    RangeRequest,
    acquisition_params,
    certify_boxes,
    certify_run_range,
    check_request,
    coverage,
    interval_images,
    sample_poses,
    source_boxes,
)
from a5ocr.certify_range.box import corners, volume_fraction
from a5ocr.certify_range.interval import COORD_MARGIN, _cos_range, bilinear_range
from a5ocr.certify_range.split import initial_grid, split_box
from a5ocr.evaluation import attacks
from a5ocr.glyphs import rasterize
from a5ocr.runs import load_run

R = 32
CFG = AcquisitionConfig().scaled(R)


@pytest.fixture(scope="module")
def glyphs():
    return rasterize("comic-neue", "Ag", R).images


@pytest.fixture(scope="module")
def tiny_run(tiny_preset_run):
    """The design run of conftest.TINY_DESIGN (the tiny preset), the session's."""
    return tiny_preset_run


def _box(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _acquire(glyph, poses, cam, cfg=CFG):
    n = poses.shape[0]
    return torch.cat([apply(glyph.expand(m, R, R), acquisition_params(poses[s : s + m], R, cam), cfg)
                      for s in range(0, n, 2500) for m in [min(2500, n - s)]]).double()


# ------------------------------------------------------------------ geometry and interval images
def test_source_boxes_hold_the_acquisitions_own_homography():
    """Point boxes: the source point of every output pixel, H^-1 p with H from
    ``acquisition.homography`` (scale passed as the perspective corners), lies in its source box,
    and the box is no wider than the float margin: the coordinate convention is the acquisition's."""
    gen = torch.Generator().manual_seed(3)
    poses = sample_poses(_box([[-40, 40], [-3, 3], [-3, 3], [0.7, 1.3]]), 24, gen)
    src = source_boxes(torch.stack([poses, poses], dim=2), R)  # [N, P, 2, 2]
    h = homography(acquisition_params(poses, R, FixedCamera(blur_sigma=0.1)), R).double()
    v, u = torch.meshgrid(torch.arange(R, dtype=torch.float64), torch.arange(R, dtype=torch.float64), indexing="ij")
    p = torch.stack([u.flatten(), v.flatten(), torch.ones(R * R, dtype=torch.float64)])
    q = torch.linalg.solve(h, p.expand(len(poses), 3, R * R))
    q = (q[:, :2] / q[:, 2:]).transpose(1, 2)  # [N, P, 2]
    assert (q >= src[..., 0] - 1e-4).all() and (q <= src[..., 1] + 1e-4).all()
    assert (src[..., 1] - src[..., 0]).max() <= 2 * COORD_MARGIN + 1e-9


def test_cos_range_is_the_exact_range_over_an_interval():
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(400, generator=gen, dtype=torch.float64) - 0.5) * 20
    b = a + torch.rand(400, generator=gen, dtype=torch.float64) * 4
    lo, hi = _cos_range(a, b)
    t = torch.linspace(0, 1, 20001, dtype=torch.float64)
    dense = torch.cos(a[:, None] + (b - a)[:, None] * t)
    assert torch.allclose(lo, dense.min(1).values, atol=1e-7) and torch.allclose(hi, dense.max(1).values, atol=1e-7)
    assert (lo <= dense.min(1).values + 1e-12).all() and (hi >= dense.max(1).values - 1e-12).all()


def test_bilinear_range_is_exact_against_grid_sample(glyphs):
    """The range over a source box equals the extremes of torch's bilinear sampling (zeros
    padding, align_corners) on a dense grid of the box: contains them and is attained."""
    gen = torch.Generator().manual_seed(1)
    n = 40
    c0 = torch.rand(n, 2, generator=gen, dtype=torch.float64) * (R + 4) - 3  # some boxes cross the border
    wh = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 3
    src = torch.stack([c0, c0 + wh], dim=-1).unsqueeze(1)  # [n, 1, 2, 2]
    g = glyphs[1].double().expand(n, R, R)
    lo, hi = bilinear_range(g, src)
    t = torch.linspace(0, 1, 61, dtype=torch.float64)
    for i in range(n):
        # a dense grid of the box, plus its integer lines (where the extremes of f can sit)
        xs, ys = ([torch.cat([c0[i, d] + wh[i, d] * t, torch.arange(math.ceil(c0[i, d]), math.floor(c0[i, d] + wh[i, d]) + 1,
                                                                   dtype=torch.float64)]) for d in range(2)])
        gx, gy = torch.meshgrid(xs, ys, indexing="xy")
        grid = (torch.stack([gx, gy], dim=-1) / (R - 1) * 2 - 1).unsqueeze(0)
        dense = torch.nn.functional.grid_sample(g[i : i + 1, None], grid, mode="bilinear", padding_mode="zeros",
                                                align_corners=True).flatten()
        assert lo[i, 0] <= dense.min() + 1e-12 and hi[i, 0] >= dense.max() - 1e-12
        assert math.isclose(lo[i, 0], dense.min(), abs_tol=1e-9) and math.isclose(hi[i, 0], dense.max(), abs_tol=1e-9)


CAMERAS = {
    "identity": FixedCamera(blur_sigma=CFG.blur_sigma[0]),
    "blur, brighter, lower contrast": FixedCamera(blur_sigma=0.25, brightness=1.08, contrast=0.9),
    "higher contrast": FixedCamera(blur_sigma=0.2, brightness=0.95, contrast=1.1),
}
BOXES = {
    "asymmetric rotation and shift": ([[2.0, 5.0], [-1.0, 0.3], [0.2, 0.7], [1.0, 1.0]], "identity", 0.0),
    "full box with scale": ([[-5.0, 5.0], [-1.0, 1.0], [-1.0, 1.0], [0.95, 1.04]], "blur, brighter, lower contrast", 0.05),
    "wide rotation, one shift": ([[-30.0, 12.0], [0.5, 0.5], [-2.0, 2.0], [1.0, 1.1]], "higher contrast", 0.0),
}


@pytest.mark.parametrize("name", list(BOXES))
def test_interval_image_contains_every_sampled_acquisition(glyphs, name):
    """10^4 poses of the box through the real ``acquisition.apply`` (its 16 corners and each
    dimension's two extreme values first): every image lies in the interval image, and with
    eps_A every point of the eps_A ball around it too."""
    rows, cam_name, eps = BOXES[name]
    box, cam = _box(rows), CAMERAS[cam_name]
    lo, hi = interval_images(glyphs[1:2], box.unsqueeze(0), cam, CFG.blur_kernel, eps)
    poses = sample_poses(box, 10_000, torch.Generator().manual_seed(7))
    assert torch.equal(poses[:16], corners(box))
    x = _acquire(glyphs[1], poses, cam)
    assert (x >= lo).all() and (x <= hi).all(), name
    if eps:
        assert ((x - eps).clamp(0, 1) >= lo).all() and ((x + eps).clamp(0, 1) <= hi).all()
    assert (hi - lo).mean() < 0.75  # far from the trivial [0, 1] box


def test_the_containment_check_catches_a_wrong_interval(glyphs):
    """The interval of rotations [2, 5] degrees does not hold the acquisitions at [-5, -2]: the
    containment test above can fail."""
    cam = CAMERAS["identity"]
    lo, hi = interval_images(glyphs[1:2], _box([[2, 5], [0, 0], [0, 0], [1, 1]]).unsqueeze(0), cam, CFG.blur_kernel)
    x = _acquire(glyphs[1], sample_poses(_box([[-5, -2], [0, 0], [0, 0], [1, 1]]), 200, torch.Generator()), cam)
    assert not ((x >= lo).all() and (x <= hi).all())


def test_a_point_box_gives_a_point_image(glyphs):
    """A zero-width box: the interval image is the acquisition itself up to the float margins."""
    box = _box([[3.3, 3.3], [0.4, 0.4], [-0.7, -0.7], [1.02, 1.02]])
    cam = CAMERAS["blur, brighter, lower contrast"]
    lo, hi = interval_images(glyphs[:1], box.unsqueeze(0), cam, CFG.blur_kernel)
    x = _acquire(glyphs[0], box[:, 0].unsqueeze(0), cam)
    assert (x >= lo).all() and (x <= hi).all()
    assert (hi - lo).max() < 5e-3


# --------------------------------------------------------------------------------- boxes
def test_splits_and_the_initial_grid_tile_the_box():
    full = ParamBox(rotation=5, shift=1, scale_pct=3).tensor()
    grid = initial_grid(full, radius=20.0)
    assert grid.shape[0] > 1
    assert math.isclose(float(volume_fraction(grid, full).sum()), 1.0, rel_tol=1e-12)
    a, b = split_box(grid[0], 0)
    assert math.isclose(float(volume_fraction(torch.stack([a, b]), full).sum()),
                        float(volume_fraction(grid[:1], full)[0]), rel_tol=1e-12)
    assert torch.equal(a[0, 1], b[0, 0])


# ------------------------------------------------------------------------ search on a run
BOX = ParamBox(rotation=4, shift=0.5, scale_pct=1)  # the tiny run certifies its "O" over it
EPS = 0.01


@pytest.fixture(scope="module")
def range_result(tiny_run):
    req = RangeRequest(run_dir=tiny_run, box=BOX, eps_a=EPS, min_width_px=0.2, budget_s=15, batch=128, samples=16, max_regions=50, check_samples=32)
    return certify_run_range(req)


def test_volumes_tile_each_glyphs_box(range_result):
    for ch, row in range_result.record["per_char"].items():
        assert math.isclose(row["certified"] + row["failed"] + row["undecided"], 1.0, rel_tol=1e-9), ch
    assert range_result.record["self_check"]["violations"] == []


def test_no_pose_in_a_certified_region_is_misclassified_or_broken(tiny_run, range_result):
    """Poses drawn in the certified leaves (their corners included) through the real camera:
    each one read correctly, and the attack at eps_A breaks none."""
    run = load_run(tiny_run)
    cam = FixedCamera(blur_sigma=run.acquisition.scaled(run.resolution).blur_sigma[0])
    cfg = run.acquisition.scaled(run.resolution)
    cert = [leaf for leaf in range_result.leaves if leaf.status == "certified"]
    assert cert, "the tiny run certifies some region (else this test proves nothing)"
    gen = torch.Generator().manual_seed(11)
    picked = [cert[i] for i in torch.randint(len(cert), (150,), generator=gen).tolist()]
    poses = torch.cat([sample_poses(leaf.box, 16, gen) for leaf in picked])
    labels = torch.tensor([leaf.glyph for leaf in picked]).repeat_interleave(16)
    x = apply(run.robust[labels], acquisition_params(poses, run.resolution, cam), cfg)
    model = run.model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == labels).all()
    some = torch.randperm(len(labels), generator=gen)[:300]  # the attack on a seeded 300 of them
    res = attacks.attack(model, x[some], labels[some], EPS, strength="fast", generator=torch.Generator().manual_seed(0))
    assert not res.success.any()


def test_certified_leaves_certify_again_and_failed_ones_do_not(tiny_run, range_result):
    run = load_run(tiny_run)
    cfg = run.acquisition.scaled(run.resolution)
    cam = FixedCamera(blur_sigma=cfg.blur_sigma[0])
    leaves = [lf for lf in range_result.leaves if lf.status == "certified"][:20]
    leaves += [lf for lf in range_result.leaves if lf.status == "failed"][:20]  # a misread pose inside: never certifiable
    gi = torch.tensor([lf.glyph for lf in leaves])
    got = certify_boxes(run.model.eval(), run.robust[gi], gi, torch.stack([lf.box for lf in leaves]), cam,
                        cfg.blur_kernel, EPS)
    assert [m is not None for m in got] == [lf.status == "certified" for lf in leaves]


def test_counterexamples_are_real(tiny_run, range_result):
    run = load_run(tiny_run)
    cfg = run.acquisition.scaled(run.resolution)
    cam = FixedCamera(blur_sigma=cfg.blur_sigma[0])
    found = [lf for lf in range_result.leaves if lf.pose is not None]
    assert found, "the tiny run's classifier misreads some glyph"
    for lf in found:
        assert (lf.box[:, 0] <= lf.pose).all() and (lf.pose <= lf.box[:, 1]).all()
        x = apply(run.robust[lf.glyph : lf.glyph + 1], acquisition_params(lf.pose.unsqueeze(0), run.resolution, cam), cfg)
        with torch.no_grad():
            pred = int(run.model.eval()(x).argmax(1))
        if lf.kind == "misclassified":
            assert pred == lf.predicted != lf.glyph
        else:
            assert lf.kind == "attack" and pred == lf.glyph


def test_coverage_of_a_fully_certified_glyph_is_one(range_result):
    rec = range_result.record
    full = BOX.tensor()
    for g, (ch, row) in enumerate(rec["per_char"].items()):
        cov = coverage(range_result.leaves, g, full, cells=40)
        assert 0.0 <= cov.min() and cov.max() <= 1.0
        assert math.isclose(cov.mean(), row["certified"], abs_tol=0.05), ch


# ---------------------------------------------------------------------------------- CLI
def test_cli_writes_table_record_and_figure(tiny_run, tmp_path, a5ocr_main):
    out, fig = tmp_path / "r.json", tmp_path / "r.png"
    code, stdout, err = a5ocr_main("certify-range", tiny_run, "--rotation", "4", "--shift", "0.5", "--eps-a", "0",
                                   "--budget-s", "20", "--json", out, "--figure", fig, "--figure-char", "O",
                                   "--check-samples", "8", "--threads", "1")
    assert code == 0, err
    assert "overall" in stdout and "fixed camera" in stdout
    rec = json.loads(out.read_text())
    assert rec["box"]["box"][0] == [-4.0, 4.0] and rec["eps_a"] == 0.0
    assert rec["fixed_camera"]["noise_std"] == 0.0 and "versions" in rec["environment"]
    assert set(rec["per_char"]) == set("AOo0") and rec["seconds"]["total"] > 0
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_unsound_certificate_is_caught_by_the_cross_check(tiny_run, tmp_path, a5ocr_main, monkeypatch):
    """A bound engine that certifies everything (and a centre check that sees no error): the
    cross-check draws poses in the 'certified' regions of the glyphs the tiny classifier misreads,
    finds them, writes the record and exits with code 3."""
    monkeypatch.setattr(bounds, "certify", lambda model, lo, hi, labels, **kw: torch.ones(lo.shape[0], dtype=torch.bool))
    monkeypatch.setattr(split_module, "centre_predictions",
                        lambda model, glyphs, labels, boxes, cam, cfg: (boxes.mean(2), labels.clone()))
    out = tmp_path / "r.json"
    code, _, err = a5ocr_main("certify-range", tiny_run, "--rotation", "2", "--shift", "0.5", "--eps-a", "0",
                              "--check-samples", "16", "--json", out)
    assert code == 3 and "INCONSISTENT" in err
    rec = json.loads(out.read_text())
    assert rec["self_check"]["misclassified"] > 0 and rec["overall"]["certified"] == 1.0


@pytest.mark.parametrize("args, words", [
    (["--rotation", "-1"], "--rotation"),
    (["--rotation", "nan"], "--rotation"),
    (["--shift", "100"], "--shift"),
    (["--scale", "60"], "--scale"),
    (["--eps-a", "1"], "--eps-a"),
    (["--budget-s", "0"], "--budget-s"),
    (["--min-width", "0"], "--min-width"),
    (["--batch", "0"], "--batch"),
    (["--blur-sigma", "0"], "--blur-sigma"),
    (["--brightness", "-1"], "--brightness"),
    (["--figure-char", "Z"], "--figure-char"),
    (["--figure", "FIG.jpg"], "--figure"),
    (["--json", "NOWHERE/r.json"], "--json"),
    (["--rotation", "0", "--figure", "FIG.png"], "--figure"),
    (["--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_run, tmp_path, a5ocr_main, args, words):
    args = [a.replace("FIG", str(tmp_path / "f")).replace("NOWHERE", str(tmp_path / "none")) for a in args]
    before = set(tiny_run.iterdir())
    code, out, err = a5ocr_main("certify-range", tiny_run, "--json", tmp_path / "r.json", *args)
    assert code == 2, (out, err)
    assert words in err and err.count("error:") == 1 and "Traceback" not in err, err  # one line (rich may wrap it)
    assert list(tmp_path.iterdir()) == [] and set(tiny_run.iterdir()) == before


def test_missing_run_is_one_line_exit_2(tmp_path, a5ocr_main):
    code, _, err = a5ocr_main("certify-range", tmp_path / "nope")
    assert code == 2 and "not found" in err and err.count("error:") == 1 and "Traceback" not in err


def test_request_checks_without_a_run():
    with pytest.raises(CertifyRangeError, match="--samples"):
        check_request(RangeRequest(run_dir=".", samples=0))


@pytest.mark.parametrize("name", list(BOXES))
def test_interval_image_of_a_print_scale_2_glyph_contains_every_sampled_acquisition(name):
    """A glyph printed at 2x the sensor (64 px for a 32 px sensor): the interval image (bilinear
    range per print pixel, then the 2 x 2 box filter) holds 2000 poses through the real
    ``apply`` at print scale 2, and is far from trivial."""
    rows, cam_name, eps = BOXES[name]
    box = _box(rows)
    cam = FixedCamera(**{**CAMERAS[cam_name].__dict__, "print_scale": 2})
    glyph = rasterize("comic-neue", "Ag", R, print_scale=2).images[1]
    lo, hi = interval_images(glyph[None], box.unsqueeze(0), cam, CFG.blur_kernel, eps)
    assert lo.shape == (1, 3, R, R)
    poses = sample_poses(box, 2000, torch.Generator().manual_seed(7))
    x = apply(glyph.expand(2000, 2 * R, 2 * R), acquisition_params(poses, R, cam), CFG).double()
    assert (x >= lo).all() and (x <= hi).all(), name
    assert (hi - lo).mean() < 0.75
