"""Detector masks (issue 18, part 1): beam stops, dead columns and hot pixels against
frames of known centre. Each centre method, with the mask, stays within 2x of its error
on the same frames without the obstruction; without the mask it is far worse."""

import h5py
import jax.numpy as jnp
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.data import disk_pattern
from prenet_jax.io import InputError, read_mask
from prenet_jax.ops import com_center, detect_bad_pixels, fill_masked, friedel_center, mirrored_valid, refine_center
from prenet_jax.preprocess import preprocess_file
from tests._helpers import run_preprocess, sha

H = W = 64
LATTICE = ((0.0, 2.6), (2.25, 1.3))


def _obstruction(kind: str) -> np.ndarray:
    """True = bad: what each obstruction hides of a 64 px frame (beam near 31.5 +- 3 px, radius 8)."""
    m = np.zeros((H, W), bool)
    rr, cc = np.mgrid[:H, :W]
    if kind == "rod":  # a beam stop's rod from the left edge to near the centre, over the disk's lower half
        m[(np.abs(rr - 34) <= 2.5) & (cc <= W // 2)] = True
    elif kind == "stop disk":  # a disk over part of the direct beam's edge
        m[(rr - 40) ** 2 + (cc - 38) ** 2 <= 36] = True
    elif kind == "dead column":
        m[:, 35] = True
    elif kind == "hot pixels":
        m[tuple(np.random.default_rng(7).integers(0, H, (2, 12)))] = True
    return m


def _frames(n: int, seed: int):
    rng = np.random.default_rng(seed)
    centers = 31.5 + rng.uniform(-3, 3, (n, 2))
    frames = np.stack([disk_pattern((H, W), tuple(c), 8.0, None, LATTICE) for c in centers])
    frames = rng.poisson(frames / frames.sum((1, 2), keepdims=True) * 2e4).astype(np.float32)
    return frames, centers


def _obstruct(frames, kind, mask):
    out = frames.copy()
    out[:, mask] = 5000.0 if kind == "hot pixels" else 0.0
    return out


ESTIMATORS = {
    "com": lambda f, v, c: com_center(f, valid=v),
    "friedel": lambda f, v, c: friedel_center(f, valid=v),
    # the Friedel refinement from a start 0.3 px off
    "refine": lambda f, v, c: refine_center(f, jnp.asarray(c, jnp.float32), window=48, valid=v)[0],
}


SEEDS = {"rod": 1, "stop disk": 2, "dead column": 3, "hot pixels": 4}


@pytest.mark.parametrize("kind", list(SEEDS))
def test_each_centre_estimator_with_the_mask_is_within_2x_of_the_unobstructed_error(kind):
    frames, truth = _frames(32, seed=SEEDS[kind])
    mask = _obstruction(kind)
    bad = _obstruct(frames, kind, mask)
    valid = jnp.asarray(~mask, jnp.float32)
    starts = truth + np.random.default_rng(1).normal(0, 0.3, truth.shape)
    for name, est in ESTIMATORS.items():

        def err(fr, v):
            return float(np.mean([np.linalg.norm(np.asarray(est(f, v, s)) - t) for f, s, t in zip(fr, starts, truth)]))

        clean, masked, blind = err(frames, None), err(bad, valid), err(bad, None)
        assert masked <= 2.0 * clean, (kind, name, clean, masked)
        assert blind > 3.0 * clean and blind > 1.5 * masked, (kind, name, clean, masked, blind)


def test_mirrored_valid_and_fill_masked():
    v = np.ones((8, 8), np.float32)
    v[1, 2] = 0.0
    m = np.asarray(mirrored_valid(jnp.asarray(v), jnp.asarray([3.5, 3.5])))
    assert m[6, 5] == 0.0 and m.sum() == 63.0  # (1, 2) mirrored about (3.5, 3.5) is (6, 5)
    m = np.asarray(mirrored_valid(jnp.asarray(v), jnp.asarray([10.0, 10.0])))
    assert m.sum() == 64.0  # mirrors outside the frame read valid
    ramp = np.add.outer(np.arange(32.0), np.arange(32.0)).astype(np.float32)
    hot = ramp.copy()
    hot[16, 16] = 1e6
    vv = np.ones((32, 32), np.float32)
    vv[16, 16] = 0
    filled = np.asarray(fill_masked(jnp.asarray(hot), jnp.asarray(vv)))
    assert filled[16, 16] == pytest.approx(32.0, abs=0.01)  # a linear ramp: the symmetric neighbours' mean
    np.testing.assert_array_equal(filled[vv > 0], ramp[vv > 0])


def test_detect_bad_pixels_finds_what_was_injected_and_nothing_else():
    sim = pj.synthetic_cube(scan=(16, 16), shape=(48, 48), radius=6.0, dose=2e4, seed=3)
    frames = sim["cube"].reshape(-1, 48, 48)
    hot, dead = detect_bad_pixels(frames)
    assert not hot.any() and not dead.any()  # disk and Bragg-spot edges are not hot pixels
    bad = frames.copy()
    bad[:, 10, 40] += 400.0  # hot: ~400 counts more in every frame
    bad[:, 20, 21] *= 0.0  # dead, inside the direct disk
    bad[:, 21, 21] += np.random.default_rng(0).poisson(30.0, bad.shape[0])  # warm, inside the disk: within its noise
    hot, dead = detect_bad_pixels(bad)
    assert np.argwhere(hot).tolist() == [[10, 40]]
    assert np.argwhere(dead).tolist() == [[20, 21]]


@pytest.fixture(scope="module")
def obstructed(tmp_path_factory):
    """A scan with a beam stop's rod (to near the centre), a dead column and three hot pixels."""
    tmp = tmp_path_factory.mktemp("masks")
    h = w = 48
    sim = pj.synthetic_cube(scan=(10, 10), shape=(h, w), radius=6.0, descan=(0.3, -0.2, 0.25, 0.3), jitter=0.3, dose=2e4, seed=3)
    rr, cc = np.mgrid[:h, :w]
    rod = (np.abs(rr - 25) <= 2) & (cc <= 19)
    dead = np.zeros((h, w), bool)
    dead[:, 31] = True
    hot = np.zeros((h, w), bool)
    hot[5, 40] = hot[30, 8] = hot[40, 30] = True
    obs = sim["cube"].copy()
    obs[:, :, rod | dead] = 0.0
    obs[:, :, hot] = 3000.0
    np.save(tmp / "clean.npy", sim["cube"])
    np.save(tmp / "obs.npy", obs)
    np.save(tmp / "rod.npy", rod)
    return tmp, sim["centers"], rod, dead, hot


def _run(tmp, src, name, truth, **kw):
    """(result, mean centre error against ``truth``)."""
    r = preprocess_file(tmp / src, tmp / f"{name}.h5", ellipse=pj.Ellipse.identity(), progress=False, log=lambda s: None, **kw)
    return r, float(np.linalg.norm(r.centers - truth, axis=-1).mean())


@pytest.mark.parametrize("method", ["com", "friedel"])
def test_a_beam_stop_on_the_file_path(obstructed, method):
    tmp, truth, rod, dead, hot = obstructed
    pipe = pj.Pipeline.classical(center_method=method)
    before = sha(tmp / "obs.npy")
    _, clean = _run(tmp, "clean.npy", f"clean_{method}", truth, pipeline=pipe, diagnostics=False)
    _, blind = _run(tmp, "obs.npy", f"blind_{method}", truth, pipeline=pipe, bad_pixels="none", diagnostics=False)
    res, masked = _run(tmp, "obs.npy", f"masked_{method}", truth, pipeline=pipe, mask=tmp / "rod.npy")
    assert sha(tmp / "obs.npy") == before
    assert masked <= 2.0 * clean and blind > 10 * masked, (method, clean, masked, blind)
    # the hot pixels and the dead column's pixels near the beam are found; the rod was given
    info = res.mask
    assert np.array_equal(info.hot, hot) and (info.dead <= dead).all() and info.dead.sum() >= 20
    assert np.array_equal(info.mask, rod | info.hot | info.dead)
    with h5py.File(tmp / f"masked_{method}.h5") as f:
        rec = f["datacube_root/metadatabundle/preprocessing"]
        np.testing.assert_array_equal(rec["mask"][()].astype(bool), info.mask)
        assert rec["mask_given_pixels"][()] == rod.sum() and rec["mask_frames"][()] == 100
        out = f["datacube_root/datacube/data"][()]
    # the output holds no hot spike and no dead hole: the masked pixels were filled
    assert out.max() < 0.5 * 3000.0
    assert (tmp / f"masked_{method}_mean.png").exists()


def test_nothing_found_changes_nothing(obstructed):
    tmp, truth, *_ = obstructed
    a, _ = _run(tmp, "clean.npy", "auto", truth, diagnostics=False)
    b, _ = _run(tmp, "clean.npy", "none", truth, bad_pixels="none", diagnostics=False)
    assert a.mask.mask is None and a.mask.frames == 100 and b.mask.frames == 0
    np.testing.assert_array_equal(a.centers, b.centers)


def test_the_pipeline_takes_a_mask_in_memory(obstructed):
    tmp, truth, rod, dead, hot = obstructed
    cube = np.load(tmp / "obs.npy")
    mask = rod | dead | hot
    pipe = pj.Pipeline.classical(ellipse_method="none")
    masked = pipe.with_mask(mask)
    assert masked.with_mask(mask) is masked and pipe.with_mask(mask) is masked  # one compile per mask
    e_masked = np.linalg.norm(masked.preprocess(cube).centers - truth, axis=-1).mean()
    e_blind = np.linalg.norm(pipe.preprocess(cube).centers - truth, axis=-1).mean()
    assert e_masked < 0.1 and e_blind > 1.0, (e_masked, e_blind)
    with pytest.raises(ValueError, match="mask is 48x48 px but the frames are 32x32"):
        masked.find_centers(np.ones((2, 32, 32), np.float32))
    with pytest.raises(ValueError, match="every pixel"):
        pipe.with_mask(np.ones((48, 48), bool))


def test_mask_files_and_their_errors(tmp_path):
    m = np.zeros((48, 48), bool)
    m[3, 4] = True
    np.save(tmp_path / "m.npy", m)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", (48, 48)), m)
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["a/mask"] = m.astype(np.uint8)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.h5", (48, 48)), m)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["x"] = m
        f["y"] = m
    with pytest.raises(InputError, match="2 2-D datasets"):
        read_mask(tmp_path / "two.h5")
    np.testing.assert_array_equal(read_mask(f"{tmp_path / 'two.h5'}:/y", (48, 48)), m)
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "m.tif", m.astype(np.uint8))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", (48, 48)), m)
    np.save(tmp_path / "wide.npy", np.zeros((48, 40), bool))
    with pytest.raises(InputError, match="is 48x40 px but the frames are 40x48; it looks transposed"):
        read_mask(tmp_path / "wide.npy", (40, 48))
    np.save(tmp_path / "gray.npy", np.full((48, 48), 0.5))
    with pytest.raises(InputError, match="values other than 0/1"):
        read_mask(tmp_path / "gray.npy")


def test_the_command_line_mask(obstructed):
    tmp, truth, rod, *_ = obstructed
    rc, out, err = run_preprocess(tmp / "obs.npy", "-o", tmp / "cli.h5", "--mask", tmp / "rod.npy", "--ellipse", "1,0", "--no-diagnostics")
    assert rc == 0, err
    assert f"({rod.sum()} given; 3 hot and" in out and "left out of the centres" in out
    np.save(tmp / "small.npy", np.zeros((40, 40), bool))
    rc, out, err = run_preprocess(tmp / "obs.npy", "-o", tmp / "cli2.h5", "--mask", tmp / "small.npy")
    assert rc == 2 and "mask small.npy is 40x40 px but the frames are 48x48" in err
    assert not (tmp / "cli2.h5").exists()


def test_the_ellipse_fit_leaves_a_beam_stop_out(tmp_path):
    """Pass 0 averages the recentred frames and their moved masks: the edge fit drops the
    azimuths some frame did not see, and the residual check of the output does the same."""
    h = w = 48
    truth = pj.Ellipse(1.06, 0.4)
    sim = pj.synthetic_cube(
        scan=(12, 12), shape=(h, w), radius=7.0, ellipse=truth, descan=(0.2, -0.1, 0.15, 0.2), jitter=0.3, dose=2e4, seed=3
    )
    rr, cc = np.mgrid[:h, :w]
    rod = (np.abs(rr - 25) <= 2) & (cc <= 19)  # hides the disk edge over ~half the azimuths
    obs = sim["cube"].copy()
    obs[:, :, rod] = 0.0
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "rod.npy", rod)
    kw = dict(progress=False, log=lambda s: None, diagnostics=False)
    masked = preprocess_file(tmp_path / "obs.npy", tmp_path / "m.h5", mask=tmp_path / "rod.npy", **kw)
    blind = preprocess_file(tmp_path / "obs.npy", tmp_path / "b.h5", bad_pixels="none", **kw)
    assert abs(masked.ellipse.ratio - truth.ratio) < 0.005 and abs(np.degrees(masked.ellipse.angle - truth.angle)) < 2.0, masked.ellipse
    # without the mask the rod's shadow is read as edge (the robust estimate of issue 27
    # drops some of it: 0.021 off, was over 0.05): still 4x the masked error bound
    assert abs(blind.ellipse.ratio - truth.ratio) > 0.015, blind.ellipse
    assert abs(masked.residual_ratio - 1.0) < 0.002  # the corrected mean is circular where it was seen
