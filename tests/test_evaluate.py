"""Evaluation harness: metrics on cases with known answers, and the report end to end on a
tiny analytic set (numbers need not be good, they must be computed)."""

import json
import math
import os

import jax
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.cli import build_parser
from prenet_jax.evaluation import EvalConfig, Methods, load_network, run_evaluation, write_report
from prenet_jax.internal import corrupt_single, gaussian_search, held_out_structures, make_synthetic, metrics, pca_denoise

# ----------------------------------------------------------------------------- metrics


def test_mse_psnr_known_noise_level(rng):
    clean = np.zeros((4, 32, 32))
    clean[:, 10:20, 10:20] = 5.0  # peak 5
    assert np.all(metrics.mse(clean, clean) == 0) and np.all(np.isinf(metrics.psnr(clean, clean)))
    # A constant error of 0.05 x peak everywhere: MSE 0.0025 (peak = 1), PSNR 26.02 dB.
    est = clean + 0.25
    np.testing.assert_allclose(metrics.mse(est, clean), 0.0025)
    np.testing.assert_allclose(metrics.psnr(est, clean), 10 * math.log10(400), rtol=1e-12)
    # Gaussian noise of sigma = 0.1 x peak: PSNR 20 dB within sampling error; scale-free.
    noisy = clean + 0.5 * rng.standard_normal(clean.shape)
    assert abs(np.mean(metrics.psnr(noisy, clean)) - 20.0) < 0.3
    np.testing.assert_allclose(metrics.psnr(noisy * 7, clean * 7), metrics.psnr(noisy, clean))
    with pytest.raises(ValueError, match="shape"):
        metrics.mse(clean[0], clean)


def test_center_errors_perfect_and_known_shift():
    truth = np.array([[10.0, 20.0], [30.5, 40.25], [0.0, 0.0]])
    e = metrics.center_errors(truth, truth)
    assert all(np.all(v == 0) for v in e.values())
    e = metrics.center_errors(truth + [0.3, -0.4], truth)
    np.testing.assert_allclose(e["ey"], 0.3)
    np.testing.assert_allclose(e["ex"], 0.4)
    np.testing.assert_allclose(e["er"], 0.5)
    np.testing.assert_allclose(e["dx"], -0.4)
    s = metrics.summarize(metrics.center_errors(np.vstack([truth[:2] + [0.3, -0.4], [np.nan, np.nan]]), truth)["er"])
    assert s["n"] == 2 and s["n_failed"] == 1 and s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.0)


def test_angle_error_wraps_at_pi_and_ratio_error():
    assert metrics.angle_error(0.1, 0.1) == 0
    assert metrics.angle_error(0.05, math.pi - 0.05) == pytest.approx(0.1)  # the same axis, 0.1 rad apart
    assert metrics.angle_error(0.2, 0.2 + math.pi) == pytest.approx(0.0, abs=1e-12)
    assert metrics.angle_error(0.0, math.pi / 2) == pytest.approx(math.pi / 2)  # the largest possible
    assert np.all(metrics.angle_error(np.linspace(-10, 10, 101), 0.3) <= math.pi / 2 + 1e-12)
    np.testing.assert_allclose(metrics.ratio_error([1.1, 1.0], [1.05, 1.0]), [0.05, 0.0], atol=1e-12)


def test_summary_percentiles_and_format():
    s = metrics.summarize(np.arange(1, 101, dtype=float))
    assert s["mean"] == 50.5 and s["median"] == 50.5 and s["p95"] == pytest.approx(95.05) and s["n"] == 100
    assert metrics.summarize([np.nan])["n"] == 0
    assert metrics.format_stat(metrics.summarize([1.0, 3.0])) == "2 ± 1.41"


def test_radial_std_circle_vs_ellipse():
    c = (31.5, 31.5)
    circle = pj.disk_pattern((64, 64), c, 12.0, None, None)
    ell = pj.disk_pattern((64, 64), c, 12.0, pj.Ellipse(1.15, 0.4), None)
    r_circle, r_ell = metrics.radial_std(circle), metrics.radial_std(ell)
    assert r_circle < 0.01 < r_ell
    radii, mean, std = metrics.radial_profile(circle)
    assert radii[0] == 0 and mean[0] == pytest.approx(1.0, abs=1e-3) and std.max() < 0.02


# ----------------------------------------------------------------------------- baselines


def test_gaussian_search_and_pca_improve_noisy_frames(rng):
    clean = np.stack([pj.disk_pattern((32, 32), (15.5 + 0.2 * k, 15.5), 5.0, None, None) * 200 for k in range(8)])
    noisy = rng.poisson(clean).astype(np.float32)
    sigma, scores = gaussian_search(noisy, clean, sigmas=(0.5, 1.0, 2.0))
    assert sigma in scores and scores[sigma] == max(scores.values())
    assert scores[sigma] > np.mean(metrics.psnr(noisy, clean))
    den = pca_denoise(noisy, 2)
    assert den.shape == noisy.shape and np.mean(metrics.mse(den, clean)) < np.mean(metrics.mse(noisy, clean))
    # Rank F-1 about the mean reproduces the frames exactly.
    np.testing.assert_allclose(pca_denoise(noisy, 7, poisson_scaling=False), noisy, atol=1e-3)


def test_corruption_labels_are_the_shifted_zero_angle():
    es = make_synthetic(n_patterns=4, n_scans=1, scan_frames=2, size=32)
    cfg = EvalConfig(doses=(1e4,), max_shift=3.0, ratio_range=(1.0, 1.0))
    a = corrupt_single(es, 1e4, cfg)
    b = corrupt_single(es, 1e6, cfg)
    np.testing.assert_array_equal(a["center"], b["center"])  # same geometry at every dose
    assert np.all(np.abs(a["center"] - es.single_zero) <= 3.0)
    # The clean target is exactly symmetric about the label: the Friedel estimate finds it.
    found = np.asarray(jax.vmap(pj.ops.friedel_center)(a["target"]))
    assert np.max(np.abs(found - a["center"])) < 0.05
    # Counts: dose x the fraction of the pattern still inside the frame after the shift.
    ratio = a["target"].sum((1, 2)) / (1e4 * es.single.sum((1, 2)))
    assert np.all((ratio > 0.8) & (ratio < 1.01))


def test_held_out_structures_are_test_split_and_mixed(monkeypatch):
    from prenet_jax import data as st  # held_out_structures looks the names up on the face

    # Fake catalogues (building the real one takes seconds): the split is a hash of the id.
    crystals = [f"fake:crystal:{i}" for i in range(300)]
    amorphous = [st.StructureInfo(f"amorphous:fake:{i:03d}", "amorphous", "amorphous") for i in range(100)]
    monkeypatch.setattr(st, "select_structures", lambda n, seed=0, frac=0.1: crystals[:n])
    monkeypatch.setattr(st, "catalogue", lambda *a, **k: amorphous)
    ids = held_out_structures(10, 0.3, train_structures=300)
    assert len(ids) == 10 and len(set(ids)) == 10 and all(st.split_of(s) == "test" for s in ids)
    assert sum(s.startswith("amorphous:") for s in ids) == 3
    assert not ids[0].startswith("amorphous:") and any(s.startswith("amorphous:") for s in ids[:4])  # interleaved
    assert set(held_out_structures(4, 0.5, train_structures=300, offset=4)).isdisjoint(held_out_structures(4, 0.5, train_structures=300))


# ----------------------------------------------------------------------------- report end to end


def test_report_end_to_end_on_a_tiny_set(tmp_path, monkeypatch):
    for var in ("PRENET_PY4DSTEM_PYTHON", "PRENET_PYXEM_PYTHON"):
        monkeypatch.delenv(var, raising=False)  # peers are optional; CI has none
    es = make_synthetic(n_patterns=8, n_scans=2, scan_frames=6, size=32, per_group=4)
    net, note = load_network("untrained", 32)
    assert net is not None and "UNTRAINED" in note
    cfg = EvalConfig(doses=(1e4,), ellipses_per_group=2, rotations=4, e2e_scan=(2, 3), e2e_cubes=("crystal",), batch=8)
    res = run_evaluation(es, Methods(network=net, network_note=note), cfg, log=lambda *_: None)
    path = write_report(res, tmp_path, command="prenet-jax evaluate --synthetic")
    text = path.read_text()
    for heading in ("## 1. Denoising", "## 2. Beam centres", "## 3. Ellipse", "## 4. End to end", "## 5. What real detectors add"):
        assert heading in text
    for label in ("Gaussian filter (best sigma)", "SVD/PCA", "masked CoM", "Friedel symmetry", "edge fit", "network (ours)"):
        assert label in text
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["dose"]): r for r in data["centers"]["rows"]}
    com = rows[("com", 1e4)]["by_kind"]["all"]["er"]
    assert com["n"] == 8 and np.isfinite(com["mean"]) and com["mean"] < 1.0  # classical CoM works on clean-ish disks
    den = {r["method"]: r for r in data["denoise"]["rows"]}
    assert den["gaussian"]["by_kind"]["all"]["psnr"]["mean"] > den["input"]["by_kind"]["all"]["psnr"]["mean"]
    assert {r["method"] for r in data["ellipse"]["rows"]} == {"fit", "network", "fit+refine", "network+refine"}
    assert {"com+refine", "friedel+refine", "network+refine"} <= {r["method"] for r in data["centers"]["rows"]}
    # None of the four means is refused. Two of them, 3.6 px disks among Bragg disks, were
    # refused until the edge search went below 2 px: from 1 px their ratio is 0.03 low,
    # and the self-calibration from that start brings all four within 0.002 of the drawn ellipse.
    ratio_err = {r["method"]: r["by_kind"]["all"]["ratio_err"] for r in data["ellipse"]["rows"]}
    assert ratio_err["fit"]["n"] == 4 and ratio_err["fit"]["n_failed"] == 0
    assert ratio_err["fit"]["mean"] < 0.02 and ratio_err["fit+refine"]["mean"] < 0.002, ratio_err
    # The classical pipeline runs the 32 px crystal cube, whose direct disk is 2.5 px in
    # radius (the robust ellipse estimate refused it until its edge search went below 2 px).
    classical = [r for r in data["e2e"]["rows"] if r["method"] == "classical"]
    assert classical and all(r.get("psnr", {}).get("n") == 6 for r in classical), classical
    assert any(r["method"] == "network" and r["psnr"]["n"] == 6 for r in data["e2e"]["rows"])
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert {"denoise_psnr.png", "centers_error.png", "ellipse_radial.png", "e2e.png"} <= set(pngs)
    # Without weights the network rows are marked, not invented.
    res2 = {k: v for k, v in res.items() if k not in ("denoise", "ellipse", "e2e")}
    res2["centers"] = dict(res["centers"], rows=[r for r in res["centers"]["rows"] if r["method"] != "network"])
    res2["network"] = "no trained weights yet"
    text2 = write_report(res2, tmp_path / "b", figures=False).read_text()
    assert "network (ours): no trained weights yet" in text2 and "py4DSTEM get_origin: not run" in text2
    # Weights without this stage's network: the row is missing for that reason.
    res2["network"] = "trained weights (w; networks: center_fine, center_net)"
    text3 = write_report(res2, tmp_path / "c", figures=False).read_text()
    assert "network (ours): not in these weights, whose pipeline runs the classical method here" in text3


def test_the_scan_rows_on_raster_scans_with_a_known_truth(tmp_path):
    """Table 1b on two analytic 6x6 raster scans: every row scored against the noise-free
    frames, and the scan denoiser above every baseline (each best in hindsight)."""
    es = make_synthetic(n_patterns=2, n_scans=1, scan_frames=2, size=32, n_grids=2, grid_size=6)
    res = run_evaluation(es, Methods(), EvalConfig(doses=(1e3,)), tables=["scans"], log=lambda *_: None)
    psnr = {r["method"]: r["by_kind"]["crystal"]["psnr"] for r in res["scans"]["rows"]}
    assert set(psnr) == {"input", "gaussian", "default", "neighbours", "pca", "scan"}
    assert all(v["n"] == 36 for v in psnr.values())
    assert psnr["scan"]["mean"] > max(v["mean"] for k, v in psnr.items() if k != "scan") + 2.0, psnr
    ratio = res["scans"]["risk"]["1000.0"]["ratio"]
    assert len(ratio) == 2 and all(0.1 < r < 1.5 for r in ratio)
    text = write_report(res, tmp_path, figures=False).read_text()
    assert "## 1b. Denoising whole scans" in text and "scan denoiser (ours)" in text and "risk/true" in text
    empty = run_evaluation(
        make_synthetic(n_patterns=2, n_scans=1, scan_frames=2, size=32),
        Methods(),
        EvalConfig(doses=(1e3,)),
        tables=["scans"],
        log=lambda *_: None,
    )
    assert empty["scans"]["rows"] == [] and "no raster scans" in write_report(empty, tmp_path / "e", figures=False).read_text()


def test_cli_is_registered(tmp_path):
    args = build_parser().parse_args(["evaluate", "--synthetic", "--doses", "1e3", "--tables", "centers", "-o", str(tmp_path)])
    assert args.func.__name__ == "run_evaluate_cli" and args.doses == [1e3] and args.tables == ["centers"]


@pytest.mark.skipif(not os.environ.get("PRENET_PY4DSTEM_PYTHON"), reason="py4DSTEM interpreter not configured")
def test_py4dstem_conventions_on_a_known_disk():
    from prenet_jax.evaluation.peers import run_peer

    cs = np.array([[30.3, 33.7], [29.9, 34.2]])
    frames = np.stack([pj.disk_pattern((64, 64), tuple(c), 8.0, None, None) for c in cs])
    found, _ = run_peer("py4dstem", "get_origin", frames, {"radii": [8.0, 8.0]})
    assert np.max(np.abs(found - cs)) < 0.02  # (qx0, qy0) = (row, col), integer pixel centres


@pytest.mark.skipif(not os.environ.get("PRENET_PY4DSTEM_PYTHON"), reason="py4DSTEM interpreter not configured")
def test_py4dstem_ellipse_convention_on_a_known_ring():
    """A ring drawn with our ellipse (ratio, a-axis angle from +col toward +row), fitted
    by py4DSTEM's fit_ellipse_amorphous_ring, comes back through ellipse_from_py4dstem
    as the same ellipse; an angle convention drifting by 90 degrees or a sign would not."""
    from prenet_jax.evaluation.peers import run_peer
    from prenet_jax.preprocess import ellipse_from_py4dstem

    truths = [pj.Ellipse(1.08, math.radians(a)) for a in (20.0, 65.0, 120.0)]
    size, c0, radius = 96, 47.5, 30.0
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    frames = []
    for e in truths:  # a Gaussian ring of radius 30 px in the corrected frame, observed through D
        p = np.linalg.solve(e.matrix(), np.stack([rows.ravel() - c0, cols.ravel() - c0]))
        frames.append(np.exp(-(((np.hypot(*p) - radius) / 2.0) ** 2)).reshape(size, size))
    opts = {"centers": [[c0, c0]] * len(truths), "fitradii": [[22.0, 40.0]] * len(truths)}
    res, _ = run_peer("py4dstem", "fit_ellipse_amorphous_ring", np.asarray(frames, np.float32), opts)
    for e, (x0, y0, a, b, th) in zip(truths, res):
        back = ellipse_from_py4dstem(a, b, th)
        assert (x0, y0) == pytest.approx((c0, c0), abs=0.05)  # (qx0, qy0) = (row, col)
        assert back.ratio == pytest.approx(e.ratio, abs=0.002) and abs(math.degrees(back.angle - e.angle)) < 0.5, (e, back)


@pytest.mark.skipif(not os.environ.get("PRENET_PYXEM_PYTHON"), reason="pyxem interpreter not configured")
def test_pyxem_conventions_on_a_known_disk():
    from prenet_jax.evaluation.peers import run_peer

    cs = np.array([[30.3, 33.7], [29.9, 34.2]])
    frames = np.stack([pj.disk_pattern((64, 64), tuple(c), 8.0, None, None) for c in cs])
    found, _ = run_peer("pyxem", "center_direct_beam", frames, {"method": "center_of_mass"})
    assert np.max(np.abs(found - cs)) < 0.02  # centre = signal_shape / 2 - shift, (x, y) -> (row, col)


def test_peer_workers_are_package_files_that_run_without_prenet_jax(tmp_path, monkeypatch):
    import ast
    import sys

    from prenet_jax.evaluation.peers import PEERS, available_peers, run_peer, worker_path

    # The peer's interpreter may not have prenet_jax (py4DSTEM pins numpy < 2): the workers import only numpy and the peer.
    for peer in PEERS:
        tree = ast.parse(worker_path(peer).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.startswith("prenet_jax") for m in imported), peer
    # A fake pyxem whose direct beam needs no shift: the worker runs by its path, reads its options
    # from the file, and the centre comes back as the frame's half size in (row, col).
    fake = tmp_path / "fake" / "pyxem"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import types\nimport numpy as np\n__version__ = '9.9-fake'\n"
        "class Diffraction2D:\n"
        "    def __init__(self, data):\n"
        "        self.data = data\n"
        "        self.axes_manager = types.SimpleNamespace(signal_shape=(data.shape[-1], data.shape[-2]))\n"
        "    def get_direct_beam_position(self, method, lazy_output, **kw):\n"
        "        assert method == 'center_of_mass' and lazy_output is False and kw == {'x': [1] * 50000}\n"
        "        return types.SimpleNamespace(data=np.zeros((self.data.shape[0], 2)))\n"
        "signals = types.SimpleNamespace(Diffraction2D=Diffraction2D)\n"
    )
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "fake"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("PRENET_PYXEM_PYTHON", str(python))
    assert available_peers(("pyxem",)) == {"pyxem": "9.9-fake"}
    # Options larger than one command-line argument may be (128 KiB) travel in a file.
    found, version = run_peer(
        "pyxem", "center_direct_beam", np.zeros((3, 16, 20)), {"method": "center_of_mass", "kwargs": {"x": [1] * 50000}}
    )
    assert version == "9.9-fake"
    np.testing.assert_array_equal(found, [[8.0, 10.0]] * 3)
    with pytest.raises(RuntimeError, match="unknown task"):
        run_peer("pyxem", "no_such_task", np.zeros((1, 4, 4)))


def test_refined_network_row_matches_its_own_pipeline():
    """The +refine row starts from the network row's centres instead of running the
    networks again: the numbers are those of the refining pipeline itself."""
    from prenet_jax.internal import network_center_pipelines, network_centers

    es = make_synthetic(n_patterns=6, n_scans=1, scan_frames=2, size=32, per_group=3)
    net, note = load_network("untrained", 32)
    methods, cfg = Methods(network=net, network_note=note), EvalConfig(doses=(1e4,), batch=8)
    frames = corrupt_single(es, 1e4, cfg)["noisy"]
    _, pipes = network_center_pipelines(methods)
    found = network_centers(pipes, frames, batch=4)  # 6 frames: a short last batch too
    direct = pipes["network+refine"].find_centers(frames)
    np.testing.assert_allclose(found["network+refine"], direct, atol=1e-3)
    np.testing.assert_allclose(found["network"], pipes["network"].find_centers(frames), atol=0)


def test_interrupted_evaluation_resumes_after_its_last_finished_dose(tmp_path, monkeypatch):
    from prenet_jax.evaluation import _tables, open_stash

    es = make_synthetic(n_patterns=6, n_scans=1, scan_frames=2, size=32, per_group=3)
    methods, cfg = Methods(select=("com",)), EvalConfig(doses=(1e3, 1e4), batch=8)  # one classical row suffices here
    quiet = dict(log=lambda *_: None)
    whole = run_evaluation(es, methods, cfg, ("centers",), **quiet)
    real = _tables.corrupt_single
    seen = []

    def corrupt(es_, dose, cfg_):
        seen.append(dose)
        if dose == 1e4 and len(seen) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second dose of the first run
        return real(es_, dose, cfg_)

    monkeypatch.setattr(_tables, "corrupt_single", corrupt)
    stash = open_stash(tmp_path / "partial", es, methods, cfg, **quiet)
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(es, methods, cfg, ("centers",), stash=stash, **quiet)
    assert [p.name for p in stash.dir.iterdir()] == ["centers_1000.pkl"]
    again = open_stash(tmp_path / "partial", es, methods, cfg, **quiet)
    res = run_evaluation(es, methods, cfg, ("centers",), stash=again, **quiet)
    assert seen == [1e3, 1e4, 1e4] and res["parts_reused"] == 1  # the first dose is not computed again
    assert json.dumps(res["centers"]["rows"]) == json.dumps(whole["centers"]["rows"])
    for dose, errs in whole["centers"]["errors"].items():
        for name, e in errs.items():
            np.testing.assert_array_equal(res["centers"]["errors"][dose][name], e)
    # Another seed is another evaluation: nothing of this one is reused.
    other = open_stash(tmp_path / "partial", es, methods, EvalConfig(doses=cfg.doses, batch=8, seed=1), **quiet)
    assert other.dir != again.dir and not other.dir.exists()
    again.clear()
    assert not (tmp_path / "partial").exists()


def test_the_stash_key_covers_the_source_code(monkeypatch):
    """A fix to a method changes its numbers: parts computed by other code are not reused."""
    from prenet_jax.evaluation import _stash

    es = make_synthetic(n_patterns=2, n_scans=1, scan_frames=2, size=32)
    cfg, methods = EvalConfig(doses=(1e3,)).to_dict(), Methods(select=("com",))
    key = _stash.evaluation_key(cfg, es, methods)
    assert _stash.evaluation_key(cfg, es, methods) == key  # stable
    monkeypatch.setattr(_stash, "_source_digest", lambda: "other code")
    assert _stash.evaluation_key(cfg, es, methods) != key
