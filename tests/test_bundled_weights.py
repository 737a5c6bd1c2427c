"""The bundled release weights: what ships, that it loads offline, and that the default
pipeline it builds is at least as good as the classical one where that one is exact.

The held-out accuracy of the weights is measured by ``prenet-jax evaluate``
(docs/training.md); these tests pin what a user gets from ``Pipeline.from_pretrained()``
and ``prenet-jax preprocess`` without options.
"""

import json

import jax
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.io import read_result
from prenet_jax.pipeline import WEIGHTS_DIR
from tests._helpers import run_preprocess

SHIPPED = WEIGHTS_DIR / "release"


def test_the_bundled_weights_ship_the_centre_networks_with_their_provenance():
    files = {p.name: p.stat().st_size for p in SHIPPED.iterdir()}
    assert set(files) == {"weights.npz", "manifest.json"} and sum(files.values()) < 60e6
    pipe = pj.Pipeline.from_pretrained()  # offline: the package's own files
    assert set(pipe.params) == {"center_net", "center_fine"}
    cfg = pipe.config
    # The stages whose networks lose to their classical methods on held-out patterns run those.
    assert (cfg.denoise_method, cfg.gaussian_sigma, cfg.center_method, cfg.ellipse_method) == ("gaussian", None, "network", "fit")
    assert (cfg.center_consensus, cfg.consensus_px) == ("friedel", 0.5)
    manifest = json.loads((SHIPPED / "manifest.json").read_text())
    for net in ("center_net", "center_fine"):
        info = manifest["networks"][net]
        assert info["best_step"] > 0 and info["seed"] == 0 and "center_err" in info["validation"]
    assert manifest["recipe"]["simulation"]["n_patterns"] == 6144 and "selection" in manifest


def test_consensus_takes_the_classical_centre_where_the_two_agree():
    """Frame by frame: the classical estimate within ``consensus_px`` of the network's,
    the network's elsewhere (untrained tiny networks: their centres are far off on some
    frames and near on others)."""
    cfg = pj.PipelineConfig.tiny(denoise_method="none", ellipse_method="none")
    params = pj.Pipeline.init(jax.random.key(0), cfg).params
    d = pj.synthetic_cube(scan=(4, 4), shape=(32, 32), radius=5.0, jitter=3.0, seed=2)
    frames = d["cube"].reshape(-1, 32, 32)
    net = pj.Pipeline(cfg, params).find_centers(frames)
    com = pj.Pipeline(cfg.replace(center_method="com")).find_centers(frames)
    dist = np.linalg.norm(net - com, axis=1)
    px = float(np.median(dist))
    agree = dist < px
    assert 0 < agree.sum() < len(agree)  # both cases occur
    got = pj.Pipeline(cfg.replace(center_consensus="com", consensus_px=px), params).find_centers(frames)
    np.testing.assert_allclose(got[agree], com[agree], atol=1e-5)
    np.testing.assert_allclose(got[~agree], net[~agree], atol=1e-5)
    with pytest.raises(ValueError, match="center_consensus"):
        pj.PipelineConfig(center_consensus="median")
    with pytest.raises(ValueError, match="consensus_px"):
        pj.PipelineConfig(consensus_px=0.0)


def test_the_consensus_reads_the_raw_counts_not_the_denoised_frames():
    """The Gaussian filter feeds the networks; the consensus's Friedel estimate reads the
    counts before it (closer to the truth from 1e4 electrons, benchmarks/EVAL.md section
    6). With a radius no frame exceeds, every centre is Friedel's on the raw counts, which
    differs from Friedel's on the filtered frames by more than the tolerance."""
    cfg = pj.PipelineConfig.tiny(denoise_method="gaussian", gaussian_sigma=2.0, ellipse_method="none")
    params = pj.Pipeline.init(jax.random.key(0), cfg).params
    d = pj.synthetic_cube(scan=(3, 3), shape=(32, 32), radius=5.0, jitter=2.0, dose=3e3, seed=4)
    frames = d["cube"].reshape(-1, 32, 32)
    got = pj.Pipeline(cfg.replace(center_consensus="friedel", consensus_px=1e3), params).find_centers(frames)
    raw = pj.Pipeline(cfg.replace(center_method="friedel", denoise_method="none")).find_centers(frames)
    filtered = pj.Pipeline(cfg.replace(center_method="friedel")).find_centers(frames)
    np.testing.assert_allclose(got, raw, atol=1e-5)
    assert np.abs(filtered - raw).max() > 1e-3
    truth = d["centers"].reshape(-1, 2)
    assert np.linalg.norm(got - truth, axis=1).max() < 0.5


@pytest.fixture(scope="module")
def demo_like():
    """Clean symmetric disks with a known descan, jitter and ellipse (the demo's kind)."""
    d = pj.synthetic_cube(scan=(6, 6), shape=(128, 128), radius=14.0, descan=(0.3, -0.2, 0.1, 0.25), jitter=0.8, dose=2e5, seed=7)
    frames = np.clip(np.round(d["cube"]), 0, 65535).astype(np.uint16)
    return frames, d["centers"]


def test_the_default_is_as_exact_as_the_classical_methods_on_clean_disks(demo_like):
    """Where the classical estimate is exact (a clean, symmetric disk) the consensus keeps
    it: the shipped networks alone are off by about 0.1 px here."""
    frames, truth = demo_like
    flat, truth = frames.reshape(-1, 128, 128), truth.reshape(-1, 2)
    shipped = pj.Pipeline.from_pretrained()
    err = np.linalg.norm(shipped.find_centers(flat) - truth, axis=1)
    alone = pj.Pipeline(shipped.config.replace(center_consensus="none"), shipped.params).find_centers(flat)
    err_alone = np.linalg.norm(alone - truth, axis=1)
    classical = np.linalg.norm(pj.Pipeline.classical().find_centers(flat) - truth, axis=1)
    assert err.mean() < 0.03 and err.max() < 0.08, err  # measured: 0.016 / 0.04 px
    assert err.mean() <= classical.mean() + 0.005
    assert err_alone.mean() > 3 * err.mean()  # measured: 0.12 px


def test_preprocess_uses_the_bundled_weights_by_default(demo_like, tmp_path):
    frames, truth = demo_like
    src = tmp_path / "scan.npy"
    np.save(src, frames)
    rc, out, err = run_preprocess(src, "-o", tmp_path / "out.h5", "--cpu", weights=True)
    assert rc == 0, err
    assert "center=network (friedel where it agrees within 0.5 px)" in out and "denoise=gaussian" in out and "ellipse=fit" in out
    p = read_result(tmp_path / "out.h5")["preprocessing"]
    assert p["weights_id"].startswith("release sha256:") and '"center_consensus": "friedel"' in p["config_json"]
    found = np.stack([p["qx0"], p["qy0"]], -1)
    assert np.abs(found - truth).max() < 0.08
    # A network the weights do not hold: named, with what they do hold.
    rc, out, err = run_preprocess(src, "-o", tmp_path / "o2.h5", "--cpu", "--ellipse-method", "network", weights=True)
    assert rc == 2 and "--ellipse-method network" in err and "hold no such network (they hold center_fine, center_net)" in err
    assert not (tmp_path / "o2.h5").exists()


def test_an_installation_without_weights_says_so_and_runs_the_classical_methods(tmp_path, monkeypatch):
    d = pj.synthetic_cube(scan=(2, 2), shape=(32, 32), radius=5.0, seed=1)
    np.save(tmp_path / "s.npy", d["cube"])
    monkeypatch.setattr("prenet_jax.pipeline.WEIGHTS_DIR", tmp_path / "none")  # where the command line looks
    rc, out, err = run_preprocess(tmp_path / "s.npy", "-o", tmp_path / "o.h5", "--cpu", weights=True)
    assert rc == 0, err
    assert "no trained weights ship with this version: using the classical methods" in out and "center=com" in out
    assert read_result(tmp_path / "o.h5")["preprocessing"]["weights_id"].startswith("none")
