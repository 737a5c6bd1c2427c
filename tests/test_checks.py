"""The run checks itself (prenet_jax/preprocess/_checks.py and the checks in _run.py):
a direct beam is looked for, the centre stage is compared with both classical
estimators on frames sampled across the scan, and an implausible ellipse is not
applied. Each test builds data whose truth is known: a beam or none, a centre
network that is wrong (untrained), a disk too small to carry an ellipse."""

import jax
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.cli import build_parser
from prenet_jax.conventions import FLAG_NO_BEAM
from prenet_jax.internal import bare_refine
from prenet_jax.io import read_result
from prenet_jax.ops import direct_beam_found
from prenet_jax.preprocess import DISAGREE_PX, check_centers, preprocess_file
from tests._helpers import run_preprocess


def _poisson_disks(rng, dose, n=4, shape=(128, 128), radius=10.0):
    d = pj.disk_pattern(shape, (60.3, 70.8), radius)
    return rng.poisson(np.broadcast_to(d / d.sum() * dose, (n, *shape))).astype(np.float32)


def test_direct_beam_found_on_disks_and_not_on_beamless_frames():
    rng = np.random.default_rng(0)
    found = jax.jit(jax.vmap(direct_beam_found))
    for dose in (3e2, 1e3, 1e5):
        assert np.all(found(_poisson_disks(rng, dose, shape=(256, 256)))), dose
    assert np.all(found(pj.disk_pattern((64, 64), (30.0, 33.0), 20.0)[None]))  # a disk of 30 % of the frame, noise-free
    for lam in (0.1, 3.0, 100.0):  # flat Poisson noise at any dose
        assert not np.any(found(rng.poisson(lam, (4, 256, 256)).astype(np.float32))), lam
    yy, xx = np.mgrid[:128, :128]
    ebsd = 500 * (1 + 0.4 * np.cos(xx / 6.0) ** 8 + 0.3 * np.exp(-((yy - 50) ** 2 + (xx - 70) ** 2) / 2000.0))  # broad bands
    assert not np.any(found(rng.poisson(np.broadcast_to(ebsd, (4, 128, 128))).astype(np.float32)))
    assert not bool(direct_beam_found(np.zeros((64, 64), np.float32)))


def _cube(**kw):
    return pj.synthetic_cube(scan=(6, 6), shape=(64, 64), radius=8.0, dose=2e4, seed=3, **kw)


def test_an_untrained_centre_network_is_caught_and_replaced():
    syn = _cube()
    frames = syn["cube"].reshape(-1, 64, 64)
    pos = np.stack(np.unravel_index(np.arange(36), (6, 6)), -1)
    net = pj.Pipeline.init(jax.random.key(0), pj.PipelineConfig.tiny(denoise_method="gaussian", ellipse_method="fit", batch_size=36))
    chk = check_centers(frames, pos, net)
    assert chk.method == "network" and chk.used in ("com", "friedel")
    assert min(chk.distance["used-com"], chk.distance["used-friedel"]) > DISAGREE_PX
    assert chk.distance["com-friedel"] < 0.2  # the two classical estimates agree on clean disks
    assert chk.warnings and "disagrees with both classical estimates" in chk.warnings[0]
    ok = check_centers(frames, pos, pj.Pipeline.classical(batch_size=36))
    assert ok.used == "com" and not ok.warnings and ok.no_beam == 0


def test_a_saturated_direct_beam_lowers_the_bar_for_the_network_to_a_pixel():
    """Clipped at a counter's depth, the disk is a plateau the networks never saw: a
    network 1.5 px from both classical estimates (under the 2 px of unsaturated data,
    over the 1 px of SATURATED_PX, and as steady as they are: the real test1.blo)
    gives way to the classical estimator when the level is known, and not otherwise."""
    syn = _cube()
    frames = syn["cube"].reshape(-1, 64, 64)
    level = float(np.floor(0.6 * frames.max()))
    clipped = np.minimum(frames, level)
    assert np.all((clipped >= level).sum(axis=(1, 2)) >= 12)  # a plateau in every frame
    pos = np.stack(np.unravel_index(np.arange(36), (6, 6)), -1)
    truth = syn["centers"].reshape(-1, 2)

    class SteadyOffsetNetwork:  # the centre stage's estimates, 1.5 px off, and the classical ones
        config = pj.PipelineConfig(center_method="network", center_consensus="friedel")

        def check_centers(self, f):
            return {"used": truth + [1.5, 0.0], "com": truth + [0.05, 0.0], "friedel": truth - [0.05, 0.0], "beam": np.ones(len(f), bool)}

    chk = check_centers(clipped, pos, SteadyOffsetNetwork(), saturation=level)
    assert chk.method == "network" and chk.used in ("com", "friedel")
    assert "saturated in 36 of 36 frames" in chk.warnings[0] and "more than 1 px from both" in chk.warnings[0]
    # Unclipped frames, or no known level: 1.5 px is under DISAGREE_PX, and the network stays.
    for f, sat in ((frames, level * 10), (clipped, None)):
        again = check_centers(f, pos, SteadyOffsetNetwork(), saturation=sat)
        assert again.used == "network" and not again.warnings


def test_preprocess_falls_back_from_a_wrong_network_and_says_so(tmp_path):
    syn = _cube()
    src = tmp_path / "cube.npy"
    np.save(src, syn["cube"].astype(np.uint16))
    net = pj.Pipeline.init(jax.random.key(0), pj.PipelineConfig.tiny(denoise_method="gaussian", ellipse_method="fit"))
    lines: list[str] = []
    res = preprocess_file(src, tmp_path / "out.h5", pipeline=net, diagnostics=False, log=lines.append)
    assert any(line.startswith("warning: the centre network disagrees") for line in lines)
    err = np.linalg.norm(res.centers - syn["centers"], axis=-1)
    assert err.max() < 0.3, err.max()  # the classical centres, not the untrained network's
    assert any(line.startswith("checks: ") and "warning" in line for line in lines)
    rec = read_result(tmp_path / "out.h5")["preprocessing"]
    assert rec["check_center_method"] == "network" and rec["check_center_used"] in ("com", "friedel")
    assert "disagrees with both classical estimates" in rec["check_warnings"]


def test_a_beamless_scan_is_not_moved_and_says_so(tmp_path):
    rng = np.random.default_rng(1)
    src = tmp_path / "flat.npy"
    np.save(src, rng.poisson(3.0, (4, 4, 64, 64)).astype(np.uint16))
    lines: list[str] = []
    res = preprocess_file(src, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, log=lines.append)
    assert any(line.startswith("warning: no direct beam found in 16 of 16") for line in lines)
    assert np.all(res.flags & FLAG_NO_BEAM)
    np.testing.assert_allclose(res.centers.reshape(-1, 2), 31.5)  # the frame centre: nothing moved
    assert res.ellipse.ratio == 1.0


def test_frames_without_beam_inside_a_scan_are_flagged(tmp_path):
    syn = _cube()
    cube = syn["cube"].astype(np.uint16)
    cube[0, :3] = np.random.default_rng(2).poisson(2.0, (3, 64, 64))  # three blanked frames
    src = tmp_path / "cube.npy"
    np.save(src, cube)
    lines: list[str] = []
    res = preprocess_file(src, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, log=lines.append)
    flagged = (res.flags & FLAG_NO_BEAM) != 0
    assert flagged.sum() == 3 and flagged.reshape(6, 6)[0, :3].all()
    assert any(line.startswith("warning: 3 of 36 frames show no direct beam") for line in lines)


def test_an_ellipse_on_a_tiny_disk_is_applied_with_a_warning(tmp_path):
    syn = pj.synthetic_cube(scan=(4, 4), shape=(64, 64), radius=4.0, dose=1e5, seed=4, ellipse=pj.Ellipse(1.05, 0.4), lattice=None)
    src = tmp_path / "small.npy"
    np.save(src, syn["cube"].astype(np.uint16))
    lines: list[str] = []
    res = preprocess_file(src, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, log=lines.append)
    warn = [line for line in lines if line.startswith("warning: the ellipse")]
    assert warn and "under 10 px radius" in warn[0], lines
    assert res.ellipse.ratio > 1.0
    assert read_result(tmp_path / "out.h5")["preprocessing"]["ellipse_warning"] == warn[0]


def test_a_bare_refine_leaves_the_input_to_the_positional():
    parser = build_parser()
    args = parser.parse_args(bare_refine(["preprocess", "--refine", "scan.h5", "-o", "out.h5"]))
    assert args.refine == "all" and args.input == ["scan.h5"]
    args = parser.parse_args(bare_refine(["preprocess", "scan.h5", "--refine", "centers", "-o", "out.h5"]))
    assert args.refine == "centers"
    args = parser.parse_args(bare_refine(["preprocess", "scan.h5", "-o", "out.h5", "--refine"]))
    assert args.refine == "all"


def test_the_cli_warns_and_exits_zero_on_a_beamless_file(tmp_path):
    np.save(tmp_path / "flat.npy", np.random.default_rng(5).poisson(1.0, (2, 2, 64, 64)).astype(np.uint16))
    rc, out, err = run_preprocess(tmp_path / "flat.npy", "-o", tmp_path / "o.h5", "--no-diagnostics")
    assert rc == 0
    assert "warning: no direct beam found" in out + err


@pytest.mark.parametrize(("rate", "text"), [(0.3, "0.3"), (0.04, "0.04"), (9.6, "9.6"), (47.2, "47"), (12345.0, "12,345")])
def test_format_rate(rate, text):
    from prenet_jax.internal import format_rate

    assert format_rate(rate) == text
