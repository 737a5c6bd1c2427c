"""``prenet-jax evaluate``: the paper's tables on held-out data, ours beside the baselines.

Every method is scored against a known truth on test-split structures
(:mod:`prenet_jax.evaluation._evalset`); every table row gives its spread and its N.

Tables
------
1. Denoising (scan patches): MSE and PSNR of the input and of each method's output
   against the noise-free expectation, per dose, crystal and amorphous. Methods: our
   denoiser; the Gaussian filter at the sigma with the highest mean PSNR at that dose (searched on
   the same frames: an upper bound of that baseline); SVD/PCA across the neighbouring
   frames of each patch, Poisson-scaled (Keenan & Kotula), at the rank best for that dose.
2. Centres (single patterns, shifted up to ``max_shift`` px, rotated, elliptically
   distorted): MAE-X, MAE-Y, MAE-R, median and 95th percentile of R, per dose, crystal
   and amorphous. Ours (denoiser + heatmap network), thresholded centre of mass, Friedel
   symmetry, and py4DSTEM ``get_origin`` / ``get_origin_friedel`` and pyxem
   ``get_direct_beam_position`` when available.
3. Ellipse (recentred mean patterns: each task's patterns averaged over in-plane
   rotations, distorted by a random ellipse, noise of ``mean_frames`` frames at the dose):
   error of the ratio (all) and of the angle (ratio >= 1.03); relative radial standard
   deviation before and after correction. Ours (ResNet), the edge fit, and py4DSTEM
   ``fit_ellipse_amorphous_ring`` when available.
4. End to end: a small cube (descan plane, jitter, one ellipse, noise) through
   :meth:`prenet_jax.Pipeline.preprocess`, against the ideal corrected cube.

The label of a centre is the zero angle plus the applied shift (never a centre of mass:
dynamical scattering makes the direct disk asymmetric), see :mod:`prenet_jax.training._augment`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from . import _metrics as M
from ..training._augment import AugmentConfig, augment, distort as _distort_eager, poisson as _poisson_eager
from ..config import PipelineConfig
from ..conventions import Ellipse
from ._evalset import EvalSet, EvalSetConfig, load_or_make
from ..ops._filters import gaussian_filter
from ..pipeline._pipeline import Pipeline
from ..ops._warp import correct_ellipse, frame_center

__all__ = [
    "EvalConfig",
    "Methods",
    "gaussian_search",
    "pca_denoise",
    "corrupt_single",
    "corrupt_scans",
    "evaluate_denoising",
    "evaluate_centers",
    "evaluate_ellipse",
    "evaluate_end_to_end",
    "run_evaluation",
    "evaluate_weights",
    "write_report",
    "add_evaluate_parser",
    "run_evaluate_cli",
]

DEFAULT_DOSES = (1e2, 1e3, 1e4, 1e5, 1e6)
GAUSSIAN_SIGMAS = (0.3, 0.4, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0)  # 0.3 px is nearly the identity
PCA_RANKS = (1, 2, 3, 4, 6, 8, 12, 16, 24)  # rank F-1 would reproduce the input
# Jitted once here: eager calls would run the cubic warp op by op.
distort = jax.jit(_distort_eager, static_argnums=(6,))
poisson = jax.jit(_poisson_eager)
_correct_jit = jax.jit(functools.partial(correct_ellipse, method="cubic"))

TABLES = ("denoise", "centers", "ellipse", "e2e")
CENTER_METHODS = ("ours", "com", "friedel", "py4dstem_origin", "py4dstem_friedel", "pyxem_com")
ELLIPSE_METHODS = ("ours", "fit", "py4dstem_ring")  # (+ "fit_subset": the fit on the peer's patterns)
REFINE = "+refine"  # a method followed by the self-calibration of prenet_jax.ops (refine_center / refine_ellipse)
DENOISE_METHODS = ("ours", "gaussian", "pca")
LABELS = {
    "input": "noisy input",
    "ours": "ours (network)",
    "gaussian": "Gaussian filter (best sigma)",
    "pca": "SVD/PCA, neighbouring frames (best rank)",
    "com": "thresholded CoM",
    "friedel": "Friedel symmetry",
    "py4dstem_origin": "py4DSTEM get_origin",
    "py4dstem_friedel": "py4DSTEM get_origin_friedel",
    "pyxem_com": "pyxem get_direct_beam_position (CoM)",
    "fit": "edge fit (classical)",
    "fit_subset": "edge fit, on the py4DSTEM subset",
    "py4dstem_ring": "py4DSTEM fit_ellipse_amorphous_ring",
    "none": "no processing",
    "classical": "classical (Gaussian + CoM + fit)",
    "classical_friedel": "classical (Gaussian + Friedel + fit)",
    "true": "true ellipse (floor)",
}
LABELS.update({f"{m}{REFINE}": f"{LABELS[m]} + refine" for m in ("ours", "com", "friedel", "fit")})


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How the held-out data are corrupted and scored.

    Attributes
    ----------
    doses : incident electrons per pattern, one table row each (gain 1, no read noise)
    max_shift : centre table: uniform shift of the zero angle in ``[-max_shift, max_shift]`` px
    ratio_range : ellipse ratio ``a/b`` drawn uniformly (angle uniform in ``[0, pi)``)
    scan_shift : denoising patches: one uniform offset per patch in ``[-scan_shift, scan_shift]`` px
    scan_jitter : and a Gaussian per-frame jitter of this standard deviation (px)
    ellipses_per_group : ellipse table: random ellipses per task's mean pattern
    rotations : in-plane rotations averaged into each mean pattern
    mean_frames : frames behind a mean pattern (its noise is that of this many frames)
    angle_min_ratio : angle errors only count for ratios at least this
    e2e_scan : scan shape of the end-to-end cubes (frames are taken from one patch)
    e2e_ellipse : (ratio, angle rad) of the end-to-end cubes
    e2e_descan : centre drift in px per scan step (d_row/d_x, d_row/d_y, d_col/d_x, d_col/d_y)
    e2e_jitter : random centre jitter (px) of the end-to-end cubes
    e2e_cubes : which end-to-end cubes: the first crystal and amorphous scan patches, and
        the analytic :func:`prenet_jax.synthetic_cube`
    seed : everything random derives from it
    batch : frames per device batch
    peer_max : at most this many frames (or mean patterns) per dose go to each peer tool
    """

    doses: tuple[float, ...] = DEFAULT_DOSES
    max_shift: float = 16.0
    ratio_range: tuple[float, float] = (1.0, 1.2)
    scan_shift: float = 8.0
    scan_jitter: float = 0.5
    ellipses_per_group: int = 8
    rotations: int = 32
    mean_frames: int = 1024
    angle_min_ratio: float = 1.03
    e2e_scan: tuple[int, int] = (4, 8)
    e2e_ellipse: tuple[float, float] = (1.1, 0.6)
    e2e_descan: tuple[float, float, float, float] = (0.4, -0.25, 0.2, 0.35)
    e2e_jitter: float = 0.3
    e2e_cubes: tuple[str, ...] = ("crystal", "amorphous", "analytic")
    seed: int = 0
    batch: int = 32
    peer_max: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Methods:
    """The pipelines and peers an evaluation runs.

    Attributes
    ----------
    network : a pipeline with trained (or untrained) networks, or None
    network_note : what the network rows are ("trained weights <path>", "untrained", or
        why they are absent)
    peers : ``{peer: version}`` of the peer tools that run here
    select : method names to run (default all that are available)
    """

    network: Pipeline | None = None
    network_note: str = "no trained weights yet"
    peers: dict = dataclasses.field(default_factory=dict)
    select: tuple[str, ...] | None = None
    refine: bool = True  # also each centre and ellipse method followed by the self-calibration ("+refine" rows)

    def wants(self, name: str) -> bool:
        if name.endswith(REFINE) and not self.refine:
            return False
        return self.select is None or name in self.select

    def has_net(self, part: str) -> bool:
        return self.network is not None and part in self.network.params


# ----------------------------------------------------------------------------- corruption


def _batches(n: int, b: int):
    for s in range(0, n, b):
        yield s, min(n, s + b)


def corrupt_single(es: EvalSet, dose: float, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The centre table's input: every single pattern shifted, rotated, distorted and noisy.

    The geometry of pattern ``i`` depends on ``(seed, i)`` only, so it is the same at
    every dose. Returns ``noisy, target (N, S, S)``, ``center (N, 2)``, ``ratio, angle (N,)``.
    """
    aug = AugmentConfig(max_shift=cfg.max_shift, ratio_range=cfg.ratio_range, rotate=True, scale_range=(1.0, 1.0),
                        dose_range=(dose, dose), read_noise_range=(0.0, 0.0), method="cubic")
    n = es.single.shape[0]
    out = {k: [] for k in ("noisy", "target", "center", "ratio", "angle")}
    base = jax.random.key(cfg.seed)
    for s, e in _batches(n, cfg.batch):
        # The key depends on the batch only: augment draws the geometry from it, so the
        # geometry is the same at every dose (only the noise's mean changes).
        key = jax.random.fold_in(base, s)
        a = augment(key, jnp.asarray(es.single[s:e]), jnp.asarray(es.single_zero[s:e]), aug)
        out["noisy"].append(np.asarray(a.noisy))
        out["target"].append(np.asarray(a.target))
        out["center"].append(np.asarray(a.center))
        out["ratio"].append(np.asarray(a.ellipse[0]))
        out["angle"].append(np.asarray(a.ellipse[1]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _scan_geometry(es: EvalSet, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Per patch: one offset, ellipse and rotation; per frame: a jitter."""
    m, f = es.scans.shape[:2]
    rng = np.random.default_rng([cfg.seed, 0x5CA7])
    offset = rng.uniform(-cfg.scan_shift, cfg.scan_shift, size=(m, 1, 2))
    shift = offset + cfg.scan_jitter * rng.standard_normal((m, f, 2))
    return {
        "shift": shift.astype(np.float32),
        "ratio": rng.uniform(*cfg.ratio_range, size=m).astype(np.float32),
        "angle": rng.uniform(0, math.pi, size=m).astype(np.float32),
        "rotation": rng.uniform(0, 2 * math.pi, size=m).astype(np.float32),
    }


def corrupt_scans(es: EvalSet, dose: float, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """The denoising table's input: patches ``(M, F, S, S)`` sharing the ellipse and
    rotation of their patch, shifted by the patch offset plus a jitter, Poisson noise at
    ``dose``. Returns ``noisy, target (M, F, S, S)``."""
    g = _scan_geometry(es, cfg)
    m, f, s1, s2 = es.scans.shape
    noisy = np.empty(es.scans.shape, np.float32)
    target = np.empty(es.scans.shape, np.float32)
    key = jax.random.fold_in(jax.random.key(cfg.seed + 1), int(round(math.log(dose) * 1000)))
    for i in range(m):
        clean = jnp.asarray(es.scans[i])
        ones = jnp.ones((f,), jnp.float32)
        d, _ = distort(clean, jnp.asarray(es.scans_zero[i]), jnp.asarray(g["shift"][i]), ones * g["ratio"][i],
                       ones * g["angle"][i], ones * g["rotation"][i], "cubic")
        t = jnp.maximum(d, 0.0) * dose
        target[i] = np.asarray(t)
        noisy[i] = np.asarray(poisson(jax.random.fold_in(key, i), t))
    return {"noisy": noisy, "target": target}


# ----------------------------------------------------------------------------- denoisers


def _gaussian(frames: np.ndarray, sigma: float, batch: int = 64) -> np.ndarray:
    out = np.empty(frames.shape, np.float32)
    flat, o = frames.reshape(-1, *frames.shape[-2:]), out.reshape(-1, *frames.shape[-2:])
    for s, e in _batches(flat.shape[0], batch):
        o[s:e] = np.asarray(gaussian_filter(jnp.asarray(flat[s:e]), float(sigma)))
    return out


def gaussian_search(noisy: np.ndarray, target: np.ndarray, sigmas: Sequence[float] = GAUSSIAN_SIGMAS) -> tuple[float, dict]:
    """The sigma (px) of the Gaussian filter with the highest mean per-frame PSNR here.

    Returns ``(best sigma, {sigma: mean PSNR})``. The mean PSNR (the log of the MSE) is
    the criterion, not the mean MSE: the MSE spans decades between frames, and its mean
    would pick the sigma that helps a few of the noisiest frames at the cost of most.
    Choosing on the test frames themselves makes the row an upper bound of the filter.
    """
    scores = {float(s): float(np.mean(M.psnr(_gaussian(noisy, s), target))) for s in sigmas}
    return max(scores, key=scores.get), scores


def pca_denoise(frames: np.ndarray, rank: int, poisson_scaling: bool = True) -> np.ndarray:
    """SVD/PCA denoising of the neighbouring frames of one patch.

    ``frames (F, H, W)`` -> the rank-``rank`` reconstruction about the mean frame.
    With ``poisson_scaling`` the data matrix is first divided by ``sqrt(g h^T)`` (``g``
    the frame sums, ``h`` the pixel means: Keenan & Kotula's weighting), so Poisson noise
    is about uniform and the leading components are signal, then multiplied back.

    The SVD runs on the ``F x F`` Gram matrix (few frames, many pixels).
    """
    f = frames.shape[0]
    x = frames.reshape(f, -1).astype(np.float64)
    if poisson_scaling:
        g = x.mean(axis=1, keepdims=True)
        h = x.mean(axis=0, keepdims=True)
        w = np.sqrt(np.maximum(g, 1e-12) * np.maximum(h, 1e-12) / max(float(x.mean()), 1e-12))
        w = np.where(h > 0, w, 1.0)
    else:
        w = np.ones((1, 1))
    y = x / w
    mu = y.mean(axis=0, keepdims=True)
    yc = y - mu
    k = int(min(rank, f - 1))
    if k <= 0:
        rec = np.broadcast_to(mu, y.shape)
    else:
        gram = yc @ yc.T
        vals, vecs = np.linalg.eigh(gram)  # ascending
        u = vecs[:, ::-1][:, :k]
        rec = mu + u @ (u.T @ yc)
    return (rec * w).reshape(frames.shape).astype(np.float32)


def _pca_all(noisy: np.ndarray, rank: int) -> np.ndarray:
    return np.stack([pca_denoise(p, rank) for p in noisy])


def _scores(est: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    e = est.reshape(-1, *est.shape[-2:])
    t = target.reshape(-1, *target.shape[-2:])
    return {"mse": M.mse(e, t), "psnr": M.psnr(e, t)}


def _by_kind(values: dict[str, np.ndarray], kinds: np.ndarray) -> dict[str, dict]:
    out = {}
    for kind in ("crystal", "amorphous", "all"):
        sel = np.ones(kinds.shape, bool) if kind == "all" else kinds == kind
        if sel.any():
            out[kind] = {k: M.summarize(v[sel]) for k, v in values.items()}
    return out


def evaluate_denoising(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, keep_examples: bool = True) -> dict:
    """Table 1. Returns ``{"rows": [...], "examples": {...}, "params": {...}}``."""
    m, f = es.scans.shape[:2]
    kinds = np.repeat(es.scans_kind, f)
    rows, params, examples = [], {}, {}
    for dose in cfg.doses:
        t0 = time.perf_counter()
        data = corrupt_scans(es, dose, cfg)
        noisy, target = data["noisy"], data["target"]
        inp = _scores(noisy, target)
        results = {"input": (inp, None)}
        if methods.wants("gaussian"):
            sigma, search = gaussian_search(noisy, target)
            results["gaussian"] = (_scores(_gaussian(noisy, sigma), target), {"sigma": sigma, "search": search})
        if methods.wants("pca"):
            # The same criterion as the Gaussian's: the highest mean per-frame PSNR.
            search = {r: float(np.mean(M.psnr(_pca_all(noisy, r).reshape(-1, *noisy.shape[-2:]), target.reshape(-1, *noisy.shape[-2:]))))
                      for r in PCA_RANKS if r < f}
            rank = max(search, key=search.get)
            results["pca"] = (_scores(_pca_all(noisy, rank), target), {"rank": rank, "search": search})
        if methods.wants("ours") and methods.has_net("denoiser"):
            den = methods.network.denoise(noisy.reshape(-1, *noisy.shape[-2:])).reshape(noisy.shape)
            results["ours"] = (_scores(den, target), None)
        for name, (sc, par) in results.items():
            rows.append({"dose": dose, "method": name, "by_kind": _by_kind({**sc, "dpsnr": sc["psnr"] - inp["psnr"],
                                                                            "mse_ratio": sc["mse"] / inp["mse"]}, kinds)})
            if par:
                params.setdefault(name, {})[str(dose)] = par
        if keep_examples:
            ex = {"noisy": noisy[:, 0], "target": target[:, 0]}
            if "gaussian" in results:
                ex["gaussian"] = _gaussian(noisy[:, 0], params["gaussian"][str(dose)]["sigma"])
            if "pca" in results:
                ex["pca"] = np.stack([pca_denoise(p, params["pca"][str(dose)]["rank"])[0] for p in noisy])
            if "ours" in results:
                ex["ours"] = methods.network.denoise(noisy[:, 0])
            examples[str(dose)] = ex
        log(f"  denoise dose {dose:g}: {', '.join(f'{k} PSNR {np.mean(v[0]['psnr']):.2f} dB' for k, v in results.items())} ({time.perf_counter() - t0:.0f} s)")
    return {"rows": rows, "params": params, "examples": examples, "n_frames": int(m * f), "n_patches": int(m)}


# ----------------------------------------------------------------------------- centres


def _pipe(center_method: str, denoise_method: str = "none", sigma: float = 1.0, batch: int = 32, refine: bool = False) -> Pipeline:
    return Pipeline(PipelineConfig(denoise_method=denoise_method, center_method=center_method, ellipse_method="none",
                                   gaussian_sigma=sigma, batch_size=batch, center_refine="friedel" if refine else "none"))


def _network_center_pipes(methods: Methods) -> tuple[Pipeline | None, Pipeline | None]:
    """Our centre finder as shipped, in two parts: the denoiser (if trained; None
    otherwise) and the centre networks on its output. Run in sequence they are the
    pipeline's ``denoise_stage`` then ``center_stage``; apart, the denoised frames are
    computed once for the centre rows with and without refinement."""
    net = methods.network
    if net is None or "center_net" not in net.params:
        return None, None
    den = None
    if "denoiser" in net.params:
        den = Pipeline(net.config.replace(center_method="none", ellipse_method="none"), {"denoiser": net.params["denoiser"]})
    cfg = net.config.replace(denoise_method="none", center_method="network", ellipse_method="none")
    return den, Pipeline(cfg, {k: v for k, v in net.params.items() if k in ("center_net", "center_fine")})


def _cap(n: int, cap: int | None) -> np.ndarray:
    return np.arange(n) if cap is None or cap >= n else np.linspace(0, n - 1, cap).round().astype(int)


def evaluate_centers(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print) -> dict:
    """Table 2. Returns ``{"rows": [...], "errors": {dose: {method: (N,) er}}}``."""
    from ._peers import run_peer

    rows, errors, notes = [], {}, {}
    pipes: dict[str, Pipeline] = {}
    if methods.wants("com"):
        pipes["com"] = _pipe("com", batch=cfg.batch)
    if methods.wants("friedel"):
        pipes["friedel"] = _pipe("friedel", batch=cfg.batch)
    for base in ("com", "friedel"):
        if methods.wants(base + REFINE):
            pipes[base + REFINE] = _pipe(base, batch=cfg.batch, refine=True)
    denoiser, ours = _network_center_pipes(methods) if methods.wants("ours") else (None, None)
    net_pipes = {}
    if ours is not None:
        net_pipes["ours"] = ours
        if methods.wants("ours" + REFINE):
            net_pipes["ours" + REFINE] = ours.with_refinement()
    radii = _disk_radii(es)
    for dose in cfg.doses:
        t0 = time.perf_counter()
        data = corrupt_single(es, dose, cfg)
        frames, truth = data["noisy"], data["center"]
        found: dict[str, np.ndarray] = {}
        for name, p in pipes.items():
            found[name] = p.find_centers(frames)
        if net_pipes:
            denoised = frames if denoiser is None else denoiser.denoise(frames)
            for name, p in net_pipes.items():
                found[name] = p.find_centers(denoised)
        sel = _cap(frames.shape[0], cfg.peer_max)
        peer_jobs = []
        if "py4dstem" in methods.peers:
            if methods.wants("py4dstem_origin"):
                peer_jobs.append(("py4dstem_origin", "py4dstem", "get_origin", {"radii": [float(r) for r in radii[sel]]}))
            if methods.wants("py4dstem_friedel"):
                peer_jobs.append(("py4dstem_friedel", "py4dstem", "get_origin_friedel", {"upsample": 16}))
        if "pyxem" in methods.peers and methods.wants("pyxem_com"):
            peer_jobs.append(("pyxem_com", "pyxem", "center_direct_beam", {"method": "center_of_mass"}))
        for name, peer, task, opts in peer_jobs:
            try:
                res, _ = run_peer(peer, task, frames[sel], opts)
                full = np.full((frames.shape[0], 2), np.nan)
                full[sel] = res
                found[name] = full
            except RuntimeError as err:
                notes[name] = str(err)[:300]
                log(f"  {name}: {err}")
        errors[str(dose)] = {}
        for name, c in found.items():
            e = M.center_errors(c, truth)
            # Peers see the frames ``sel``; a NaN elsewhere is a failure of the method.
            ok = np.isin(np.arange(len(truth)), sel) if name in ("py4dstem_origin", "py4dstem_friedel", "pyxem_com") else np.ones(len(truth), bool)
            by = {}
            for kind in ("crystal", "amorphous", "all"):
                s = ok & (np.ones(len(truth), bool) if kind == "all" else es.single_kind == kind)
                if s.any():
                    by[kind] = {k: M.summarize(e[k][s]) for k in ("ex", "ey", "er")}
            rows.append({"dose": dose, "method": name, "by_kind": by})
            errors[str(dose)][name] = e["er"]
        log(f"  centres dose {dose:g}: {', '.join(f'{k} MAE-R {np.nanmean(v):.3f} px' for k, v in errors[str(dose)].items())} ({time.perf_counter() - t0:.0f} s)")
    return {"rows": rows, "errors": errors, "notes": notes, "n_patterns": int(es.single.shape[0])}


def _disk_radii(es: EvalSet) -> np.ndarray:
    """Direct-disk radius (px) per single pattern: from the simulation's metadata, else
    measured as the radius holding half of the 0.2-max area of the clean pattern."""
    r = es.info.get("disk_radius_px")
    if r is not None and len(r) == es.single.shape[0]:
        return np.asarray(r, np.float64)
    area = (es.single >= 0.2 * es.single.max(axis=(1, 2), keepdims=True)).sum(axis=(1, 2))
    return np.sqrt(area / math.pi)


# ----------------------------------------------------------------------------- ellipse


def _group_means(es: EvalSet, cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per task: the mean clean pattern averaged over ``rotations`` in-plane rotations about
    the zero angle (rings, as in the mean of a scan over many grains). Returns
    ``(means (G, S, S), zero (G, 2), kind (G,), radius (G,))``."""
    groups = np.unique(es.single_group)
    radii = _disk_radii(es)
    means, zeros, kinds, rad = [], [], [], []
    k = max(1, cfg.rotations)
    for gi, g in enumerate(groups):
        idx = np.flatnonzero(es.single_group == g)
        mean = es.single[idx].mean(axis=0)
        z = es.single_zero[idx[0]]
        phi = (np.random.default_rng([cfg.seed, 0xE11, gi]).uniform(0, 2 * math.pi) + 2 * math.pi * np.arange(k) / k).astype(np.float32)
        ones = jnp.ones((k,), jnp.float32)
        rot, _ = distort(jnp.broadcast_to(jnp.asarray(mean), (k,) + mean.shape), jnp.asarray(z), jnp.zeros((k, 2)), ones, ones * 0, jnp.asarray(phi), "cubic")
        means.append(np.asarray(jnp.maximum(rot, 0).mean(0)))
        zeros.append(z)
        kinds.append(es.single_kind[idx[0]])
        rad.append(float(np.median(radii[idx])))
    return np.stack(means), np.stack(zeros), np.asarray(kinds), np.asarray(rad)


def _ellipse_samples(es: EvalSet, cfg: EvalConfig) -> dict[str, np.ndarray]:
    """Noise-free distorted mean patterns with the zero angle on the frame centre."""
    means, zeros, kinds, rad = _group_means(es, cfg)
    g, e = means.shape[0], max(1, cfg.ellipses_per_group)
    rng = np.random.default_rng([cfg.seed, 0xE1])
    ratio = rng.uniform(*cfg.ratio_range, size=(g, e)).astype(np.float32)
    angle = rng.uniform(0, math.pi, size=(g, e)).astype(np.float32)
    c0 = np.asarray(frame_center(means.shape[-2:]), np.float32)
    out = np.empty((g, e) + means.shape[-2:], np.float32)
    for i in range(g):
        ones = jnp.ones((e,), jnp.float32)
        d, _ = distort(jnp.broadcast_to(jnp.asarray(means[i]), (e,) + means.shape[-2:]), jnp.asarray(zeros[i]),
                       jnp.broadcast_to(jnp.asarray(c0 - zeros[i]), (e, 2)), jnp.asarray(ratio[i]), jnp.asarray(angle[i]),
                       ones * 0, "cubic")
        out[i] = np.asarray(jnp.maximum(d, 0))
    return {"expected": out.reshape(g * e, *means.shape[-2:]), "ratio": ratio.ravel(), "angle": angle.ravel(),
            "kind": np.repeat(kinds, e), "radius": np.repeat(rad, e)}


def _fitradii(mean: np.ndarray, r_disk: float) -> tuple[float, float]:
    """An annulus for py4DSTEM's ring fit: around the strongest ring outside the direct disk,
    chosen from the azimuthal mean (what a user picks by eye)."""
    radii, prof, _ = M.radial_profile(mean)
    lo = 1.3 * r_disk + 2.0
    hi = radii[-1] * 0.95
    sel = (radii > lo) & (radii < hi)
    if not sel.any():
        return float(max(1.0, 0.5 * r_disk)), float(min(hi, 1.5 * r_disk + 4))
    # The ring is the largest excess over a smooth decay: weight the profile by r.
    rr = radii[sel][np.argmax((prof * radii)[sel])]
    w = max(4.0, 0.35 * rr)
    return float(max(lo - 1.0, rr - w)), float(min(hi, rr + w))


def evaluate_ellipse(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print) -> dict:
    """Table 3 (and the radial-profile figure's data)."""
    from ._peers import run_peer
    from ..preprocess._run import ellipse_from_py4dstem

    t0 = time.perf_counter()
    smp = _ellipse_samples(es, cfg)
    n = smp["ratio"].shape[0]
    log(f"  ellipse: {n} mean patterns ({time.perf_counter() - t0:.0f} s)")
    fit_pipe = Pipeline(PipelineConfig(denoise_method="none", center_method="none", ellipse_method="fit"))
    net_pipe = None
    if methods.wants("ours") and methods.has_net("ellipse_net"):
        net = methods.network
        net_pipe = Pipeline(net.config.replace(denoise_method="none", center_method="none", ellipse_method="network"),
                            {"ellipse_net": net.params["ellipse_net"]})
    c0 = frame_center(smp["expected"].shape[-2:])
    rows, notes, profiles = [], {}, {}
    key = jax.random.key(cfg.seed + 2)
    for dose in cfg.doses:
        t1 = time.perf_counter()
        kd = jax.random.fold_in(key, int(round(math.log(dose) * 1000)))
        noisy = np.empty(smp["expected"].shape, np.float32)
        for s, e in _batches(n, cfg.batch):
            lam = jnp.asarray(smp["expected"][s:e] * (dose * cfg.mean_frames))
            noisy[s:e] = np.asarray(poisson(jax.random.fold_in(kd, s), lam)) / cfg.mean_frames
        est: dict[str, np.ndarray] = {}
        pipes = {}
        if methods.wants("fit"):
            pipes["fit"] = fit_pipe
        if net_pipe is not None:
            pipes["ours"] = net_pipe
        for name, p in pipes.items():
            r = np.full((n, 2), np.nan)
            for i in range(n):
                try:
                    e = p.estimate_ellipse(noisy[i])
                    r[i] = e.ratio, e.angle
                except ValueError:
                    pass
            est[name] = r
        for name in [m for m in est if methods.wants(m + REFINE)]:
            est[name + REFINE] = _refine_ellipses(noisy, est[name])
        if "py4dstem" in methods.peers and methods.wants("py4dstem_ring"):
            sel = _cap(n, cfg.peer_max if cfg.peer_max is not None else 128)
            opts = {"centers": [list(c0)] * len(sel), "fitradii": [_fitradii(noisy[i], smp["radius"][i]) for i in sel]}
            try:
                res, _ = run_peer("py4dstem", "fit_ellipse_amorphous_ring", noisy[sel], opts)
                r = np.full((n, 2), np.nan)
                for j, i in enumerate(sel):
                    x0, y0, a, b, th = res[j]
                    if np.all(np.isfinite(res[j])) and a > 0 and b > 0:
                        e = ellipse_from_py4dstem(a, b, th)
                        r[i] = e.ratio, e.angle
                est["py4dstem_ring"] = r
                notes.setdefault("py4dstem_ring_n", int(len(sel)))
            except RuntimeError as err:
                notes["py4dstem_ring"] = str(err)[:300]
                log(f"  py4dstem_ring: {err}")
        # Radial standard deviation before / after (corrected about the frame centre).
        rsd_before = np.array([M.radial_std(x) for x in noisy])
        rsd = {"before": rsd_before}
        true_m = [Ellipse(float(a), float(b)).matrix() for a, b in zip(smp["ratio"], smp["angle"])]
        rsd["true"] = np.array([M.radial_std(_correct(noisy[i], true_m[i])) for i in range(n)])
        for name, r in est.items():
            vals = np.full(n, np.nan)
            for i in range(n):
                if np.all(np.isfinite(r[i])):
                    vals[i] = M.radial_std(_correct(noisy[i], Ellipse(float(r[i, 0]), float(r[i, 1])).matrix()))
            rsd[name] = vals
        big = smp["ratio"] >= cfg.angle_min_ratio
        everything = np.ones(n, bool)
        scored = [(name, name, r, everything) for name, r in est.items() if name != "py4dstem_ring"]
        if "py4dstem_ring" in est:
            sub = np.isin(np.arange(n), _cap(n, cfg.peer_max if cfg.peer_max is not None else 128))
            scored.append(("py4dstem_ring", "py4dstem_ring", est["py4dstem_ring"], sub))
            if "fit" in est and not sub.all():  # the classical fit on the peer's patterns, like for like
                scored.append(("fit_subset", "fit", est["fit"], sub))
        for name, src, r, scope in scored:
            rerr = M.ratio_error(r[:, 0], smp["ratio"])
            aerr = np.degrees(M.angle_error(r[:, 1], smp["angle"]))
            by = {}
            for kind in ("crystal", "amorphous", "all"):
                s = scope & (np.ones(n, bool) if kind == "all" else smp["kind"] == kind)
                if s.any():
                    by[kind] = {"ratio_err": M.summarize(rerr[s]), "angle_err_deg": M.summarize(aerr[s & big]),
                                "rsd_before": M.summarize(rsd["before"][s]), "rsd_after": M.summarize(rsd[src][s]),
                                "rsd_true": M.summarize(rsd["true"][s])}
            rows.append({"dose": dose, "method": name, "by_kind": by})
        # One example per kind for the radial-profile figure.
        ex = {}
        for kind in ("crystal", "amorphous"):
            idx = np.flatnonzero(smp["kind"] == kind)
            if idx.size:
                i = int(idx[np.argmax(smp["ratio"][idx])])
                prof = {"before": M.radial_profile(noisy[i])[1:], "true": M.radial_profile(_correct(noisy[i], true_m[i]))[1:]}
                for name, r in est.items():
                    if np.all(np.isfinite(r[i])):
                        prof[name] = M.radial_profile(_correct(noisy[i], Ellipse(float(r[i, 0]), float(r[i, 1])).matrix()))[1:]
                ex[kind] = {"image": noisy[i], "ratio": float(smp["ratio"][i]), "angle": float(smp["angle"][i]), "profiles": prof}
        profiles[str(dose)] = ex
        msg = ", ".join(f"{k} ratio err {np.nanmean(M.ratio_error(v[:, 0], smp['ratio'])):.4f}" for k, v in est.items())
        log(f"  ellipse dose {dose:g}: {msg} ({time.perf_counter() - t1:.0f} s)")
    return {"rows": rows, "notes": notes, "profiles": profiles, "n_samples": int(n),
            "n_groups": int(np.unique(es.single_group).size), "n_big": int((smp["ratio"] >= cfg.angle_min_ratio).sum())}


@jax.jit
def _refine_ellipses_jit(images, starts, c0):
    from ..ops._refine import _refine_ellipse_jit

    band = (3.0, images.shape[-1] / 2.0 - 3.0)
    one = lambda im, p: _refine_ellipse_jit(im, p, c0, 30, False, band, 128, 96, "cubic")  # noqa: E731
    return jax.vmap(one)(images, starts)


def _refine_ellipses(images: np.ndarray, est: np.ndarray, batch: int = 16) -> np.ndarray:
    """``(ratio, angle)`` rows of ``est`` refined by :func:`prenet_jax.ops.refine_ellipse`
    on their recentred mean patterns (vmapped in batches); a refinement that does not
    lower the objective, or a missing start, keeps the start."""
    from ..ops._refine import _ellipse_of_params, ellipse_params

    out = est.copy()
    ok = np.all(np.isfinite(est), axis=1)
    idx = np.flatnonzero(ok)
    c0 = jnp.asarray(frame_center(images.shape[-2:]), jnp.float32)
    for s in range(0, idx.size, batch):
        sel = idx[s : s + batch]
        starts = jnp.stack([ellipse_params(Ellipse(float(max(est[i, 0], 1.0)), float(est[i, 1]))) for i in sel])
        x, before, after = _refine_ellipses_jit(jnp.asarray(images[sel]), starts, c0)
        for j, i in enumerate(sel):
            if float(after[j]) < float(before[j]) and np.all(np.isfinite(np.asarray(x[j]))):
                ratio, angle = _ellipse_of_params(x[j])
                out[i] = float(ratio), float(angle)
    return out


def _correct(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Undo ``matrix`` about the frame centre (cubic)."""
    return np.asarray(_correct_jit(jnp.asarray(image, jnp.float32), jnp.asarray(matrix, jnp.float32)))


# ----------------------------------------------------------------------------- end to end


def _e2e_cube(clean: np.ndarray, zero: np.ndarray, dose: float, cfg: EvalConfig, seed: int) -> dict[str, np.ndarray]:
    """A scan cube from the frames of one patch: descan plane + jitter + one ellipse + one
    rotation + Poisson noise; the ideal is the rotated clean pattern with its zero angle
    on the frame centre, undistorted, in the same units."""
    rx, ry = cfg.e2e_scan
    n = rx * ry
    idx = np.arange(n) % clean.shape[0]
    frames = clean[idx]
    rng = np.random.default_rng([seed, 0xE2E])
    ix, iy = np.meshgrid(np.arange(rx) - (rx - 1) / 2, np.arange(ry) - (ry - 1) / 2, indexing="ij")
    dr = cfg.e2e_descan
    c0 = np.asarray(frame_center(clean.shape[-2:]))
    centers = np.stack([c0[0] + dr[0] * ix + dr[1] * iy, c0[1] + dr[2] * ix + dr[3] * iy], -1).reshape(n, 2)
    centers = centers + cfg.e2e_jitter * rng.standard_normal(centers.shape)
    rot = float(rng.uniform(0, 2 * math.pi))
    ratio, angle = cfg.e2e_ellipse
    ones = jnp.ones((n,), jnp.float32)
    z = jnp.asarray(zero, jnp.float32)
    d, c = distort(jnp.asarray(frames), z, jnp.asarray(centers - zero, jnp.float32), ones * ratio, ones * angle, ones * rot, "cubic")
    ideal, _ = distort(jnp.asarray(frames), z, jnp.broadcast_to(jnp.asarray(c0 - zero, jnp.float32), (n, 2)), ones, ones * 0, ones * rot, "cubic")
    expected = jnp.maximum(d, 0) * dose
    noisy = poisson(jax.random.key(seed), expected)
    s = clean.shape[-2:]
    return {"cube": np.asarray(noisy).reshape(rx, ry, *s), "ideal": (np.asarray(jnp.maximum(ideal, 0)) * dose).reshape(rx, ry, *s),
            "centers": np.asarray(c).reshape(rx, ry, 2), "ellipse": Ellipse(ratio, angle)}


def _e2e_pipelines(methods: Methods, sigma: float, batch: int) -> dict[str, Pipeline]:
    """The pipelines of table 4; a network that did not ship is replaced by its classical stage."""
    out = {"none": Pipeline(PipelineConfig(denoise_method="none", center_method="none", ellipse_method="none", batch_size=batch)),
           "classical": Pipeline(PipelineConfig.classical(gaussian_sigma=sigma, batch_size=batch)),
           "classical_friedel": Pipeline(PipelineConfig.classical(gaussian_sigma=sigma, center_method="friedel", batch_size=batch))}
    net = methods.network
    if net is not None and methods.wants("ours"):
        cfg = net.config.replace(
            denoise_method="network" if "denoiser" in net.params else "gaussian",
            center_method="network" if "center_net" in net.params else "com",
            ellipse_method="network" if "ellipse_net" in net.params else "fit", gaussian_sigma=sigma, batch_size=batch)
        out["ours"] = Pipeline(cfg, dict(net.params))
    return out


def evaluate_end_to_end(es: EvalSet, methods: Methods, cfg: EvalConfig, sigmas: dict | None = None, log: Callable = print) -> dict:
    """Table 4: one crystal and one amorphous patch as small cubes, plus the analytic
    :func:`prenet_jax.synthetic_cube`, through ``preprocess`` at every dose."""
    from ..data._synthetic import synthetic_cube

    rows, examples = [], {}
    cubes = []
    for kind in ("crystal", "amorphous"):
        idx = np.flatnonzero(es.scans_kind == kind)
        if idx.size and kind in cfg.e2e_cubes:
            cubes.append((f"{kind} ({es.scans_id[idx[0]]})", kind, int(idx[0])))
    if "analytic" in cfg.e2e_cubes:
        cubes.append(("analytic (synthetic_cube)", "analytic", -1))
    for dose in cfg.doses:
        sigma = (sigmas or {}).get(str(dose), {}).get("sigma", 1.0)
        pipes = _e2e_pipelines(methods, sigma, min(cfg.batch, cfg.e2e_scan[0] * cfg.e2e_scan[1]))
        for ci, (label, kind, i) in enumerate(cubes):
            if i >= 0:
                d = _e2e_cube(es.scans[i], es.scans_zero[i], dose, cfg, cfg.seed * 1000 + ci)
            else:
                s = es.scans.shape[-1]
                sc = synthetic_cube(scan=cfg.e2e_scan, shape=(s, s), radius=s / 10, ellipse=Ellipse(*cfg.e2e_ellipse),
                                    descan=cfg.e2e_descan, jitter=cfg.e2e_jitter, dose=dose, seed=cfg.seed)
                d = {"cube": sc["cube"], "ideal": sc["ideal"], "centers": sc["centers"], "ellipse": sc["ellipse"]}
            for name, p in pipes.items():
                t0 = time.perf_counter()
                try:
                    res = p.preprocess(d["cube"])
                except ValueError as err:  # e.g. no ellipse could be fitted
                    rows.append({"dose": dose, "cube": label, "method": name, "error": str(err)[:200]})
                    continue
                sc_ = _scores(res.data, d["ideal"])
                ce = M.center_errors(res.centers.reshape(-1, 2), d["centers"].reshape(-1, 2)) if name != "none" else None
                mean_out = res.data.mean(axis=(0, 1))
                row = {"dose": dose, "cube": label, "method": name, "n_frames": int(res.data.shape[0] * res.data.shape[1]),
                       "mse": M.summarize(sc_["mse"]), "psnr": M.summarize(sc_["psnr"]),
                       "center_er": M.summarize(ce["er"]) if ce else None,
                       "ratio": res.ellipse.ratio, "angle_deg": math.degrees(res.ellipse.angle),
                       "ratio_err": float(M.ratio_error(res.ellipse.ratio, d["ellipse"].ratio)) if name != "none" else None,
                       "angle_err_deg": float(np.degrees(M.angle_error(res.ellipse.angle, d["ellipse"].angle))) if name != "none" else None,
                       "rsd_mean": M.radial_std(mean_out), "rsd_ideal": M.radial_std(d["ideal"].mean(axis=(0, 1))),
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                if dose == cfg.doses[len(cfg.doses) // 2] and ci == 0:
                    examples[name] = {"mean": mean_out, "frame": res.data[0, 0]}
                    examples["raw"] = {"mean": d["cube"].mean(axis=(0, 1)), "frame": d["cube"][0, 0]}
                    examples["ideal"] = {"mean": d["ideal"].mean(axis=(0, 1)), "frame": d["ideal"][0, 0]}
        log(f"  end to end dose {dose:g}: " + ", ".join(f"{r['method']}@{r['cube'].split()[0]} PSNR {r['psnr']['mean']:.1f}" for r in rows if r["dose"] == dose and "psnr" in r))
    return {"rows": rows, "examples": examples, "scan": list(cfg.e2e_scan)}


# ----------------------------------------------------------------------------- the run


def _set_summary(es: EvalSet) -> dict:
    out = {"source": es.source, "n_single": int(es.single.shape[0]), "frame": list(es.single.shape[-2:]),
           "n_groups": int(np.unique(es.single_group).size), "n_structures": int(np.unique(es.single_id).size),
           "single_by_kind": {k: int((es.single_kind == k).sum()) for k in ("crystal", "amorphous")},
           "n_scans": int(es.scans.shape[0]), "scan_frames": int(es.scans.shape[1]),
           "scans_by_kind": {k: int((es.scans_kind == k).sum()) for k in ("crystal", "amorphous")},
           "structures": sorted(set(es.single_id.tolist())), "scan_structures": es.scans_id.tolist()}
    out.update({k: v for k, v in es.info.items() if k in ("root", "config")})
    return out


def run_evaluation(es: EvalSet, methods: Methods, cfg: EvalConfig = EvalConfig(), tables: Sequence[str] = TABLES,
                   log: Callable = print) -> dict:
    """Run the selected tables; returns everything the report needs (JSON-able except
    the ``examples``/``profiles``/``errors`` arrays, which only the figures use)."""
    res: dict = {"config": cfg.to_dict(), "set": _set_summary(es), "network": methods.network_note,
                 "peers": dict(methods.peers), "tables": list(tables), "timing": {}}
    for t in tables:
        t0 = time.perf_counter()
        log(f"{t} ...")
        if t == "denoise":
            res["denoise"] = evaluate_denoising(es, methods, cfg, log)
        elif t == "centers":
            res["centers"] = evaluate_centers(es, methods, cfg, log)
        elif t == "ellipse":
            res["ellipse"] = evaluate_ellipse(es, methods, cfg, log)
        elif t == "e2e":
            sig = res.get("denoise", {}).get("params", {}).get("gaussian")
            res["e2e"] = evaluate_end_to_end(es, methods, cfg, sig, log)
        else:
            raise ValueError(f"unknown table {t!r}: use {TABLES}")
        res["timing"][t] = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------- report


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "n/a"
    return f"{x:.{digits}g}"


def _pm(s: dict | None, digits: int = 3, scale: float = 1.0) -> str:
    return M.format_stat(s, digits, scale=scale) if s else "n/a"


def _n(s: dict | None) -> str:
    if not s:
        return "0"
    return f"{s['n']}" + (f" ({s['n_failed']} failed)" if s.get("n_failed") else "")


def _missing_rows(methods_present: set, candidates: Sequence[str], res: dict, peer_for: dict) -> list[str]:
    out = []
    for m in candidates:
        if m in methods_present:
            continue
        if m == "ours":
            out.append(f"- {LABELS[m]}: {res['network']}")
        elif m in peer_for:
            peer = peer_for[m]
            note = res.get("_notes", {}).get(m)
            out.append(f"- {LABELS[m]}: " + (f"failed ({note})" if note else f"not run ({peer} not installed here)"))
    return out


def _denoise_md(d: dict, res: dict) -> list[str]:
    L = ["## 1. Denoising", "",
         f"{d['n_patches']} scan patches x {d['n_frames'] // max(d['n_patches'], 1)} neighbouring frames = {d['n_frames']} frames "
         "per dose. MSE is relative to the clean frame's peak (peak = 1); PSNR in dB with that peak. Each cell: mean ± standard "
         "deviation over the frames; N frames. 'MSE out/in' is the median over frames of the per-frame ratio (below 1: better "
         "than the input). The Gaussian sigma and the PCA rank are those with the highest mean PSNR at that dose, chosen on "
         "these frames (an upper bound of each baseline).", ""]
    present = {r["method"] for r in d["rows"]}
    L += _missing_rows(present, DENOISE_METHODS, res, {})
    if len(L) and L[-1] != "":
        L.append("")
    for kind in ("crystal", "amorphous"):
        rows = [r for r in d["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        L += [f"### {kind.capitalize()}", "", "| dose (e⁻/pattern) | method | MSE | PSNR (dB) | ΔPSNR (dB) | MSE out/in (median) | parameter | N |",
              "|---:|---|---:|---:|---:|---:|---|---:|"]
        for r in rows:
            b = r["by_kind"][kind]
            par = d["params"].get(r["method"], {}).get(str(r["dose"]), {})
            ptxt = f"σ = {par['sigma']:g} px" if "sigma" in par else f"rank {par['rank']}" if "rank" in par else ""
            L.append(f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_pm(b['mse'])} | {_pm(b['psnr'])} | "
                     f"{'–' if r['method'] == 'input' else _pm(b['dpsnr'])} | {'–' if r['method'] == 'input' else _f(b['mse_ratio']['median'])} | {ptxt} | {_n(b['mse'])} |")
        L.append("")
    return L


def _centers_md(c: dict, res: dict) -> list[str]:
    L = ["## 2. Beam centres", "",
         f"{c['n_patterns']} single patterns per dose, zero angle shifted uniformly by up to ±{res['config']['max_shift']:g} px "
         "per axis, rotated and elliptically distorted; the label is the zero angle plus the shift. MAE-X = mean |Δcol|, "
         "MAE-Y = mean |Δrow|, MAE-R = mean distance (px), each ± its standard deviation; median and 95th percentile of the "
         "distance; N patterns (failures are non-finite answers).", ""]
    present = {r["method"] for r in c["rows"]}
    res = dict(res, _notes=c.get("notes", {}))
    L += _missing_rows(present, CENTER_METHODS, res, {"py4dstem_origin": "py4DSTEM", "py4dstem_friedel": "py4DSTEM", "pyxem_com": "pyxem"})
    if L[-1] != "":
        L.append("")
    for kind in ("crystal", "amorphous"):
        rows = [r for r in c["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        L += [f"### {kind.capitalize()}", "", "| dose (e⁻/pattern) | method | MAE-X (px) | MAE-Y (px) | MAE-R (px) | median R | p95 R | N |",
              "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            b = r["by_kind"][kind]
            L.append(f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_pm(b['ex'])} | {_pm(b['ey'])} | {_pm(b['er'])} | "
                     f"{_f(b['er']['median'])} | {_f(b['er']['p95'])} | {_n(b['er'])} |")
        L.append("")
    return L


def _ellipse_md(e: dict, res: dict) -> list[str]:
    cfg = res["config"]
    L = ["## 3. Ellipse", "",
         f"{e['n_samples']} recentred mean patterns per dose ({e['n_groups']} tasks x {cfg['ellipses_per_group']} random ellipses, "
         f"ratio uniform in [{cfg['ratio_range'][0]:g}, {cfg['ratio_range'][1]:g}], angle uniform); each is the task's patterns "
         f"averaged over {cfg['rotations']} in-plane rotations with the noise of {cfg['mean_frames']} frames at the dose. "
         f"Angle error (degrees, modulo 180°) only for ratio ≥ {cfg['angle_min_ratio']:g} ({e['n_big']} of {e['n_samples']}). "
         "RSD: relative radial standard deviation (Σ_r std_φ / Σ_r mean_φ of the polar image; 0 = circular) before correction, "
         "after correction with the method's ellipse, and with the true ellipse (the floor left by the pattern's own anisotropy).", ""]
    present = {r["method"] for r in e["rows"]}
    res = dict(res, _notes=e.get("notes", {}))
    L += _missing_rows(present, ELLIPSE_METHODS, res, {"py4dstem_ring": "py4DSTEM"})
    if "py4dstem_ring_n" in e.get("notes", {}):
        L.append(f"- py4DSTEM fit_ellipse_amorphous_ring runs on {e['notes']['py4dstem_ring_n']} evenly chosen mean patterns per "
                 "dose (a least-squares fit of ~10⁴ pixels each), annulus around the strongest ring outside the direct disk.")
    if L[-1] != "":
        L.append("")
    for kind in ("crystal", "amorphous"):
        rows = [r for r in e["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        L += [f"### {kind.capitalize()}", "",
              "| dose (e⁻/pattern) | method | ratio error | median | p95 | angle error (°) | median | p95 | RSD before | RSD after | RSD true | N (ratio / angle) |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            b = r["by_kind"][kind]
            L.append(f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_pm(b['ratio_err'], 2)} | {_f(b['ratio_err']['median'], 2)} | "
                     f"{_f(b['ratio_err']['p95'], 2)} | {_pm(b['angle_err_deg'], 2)} | {_f(b['angle_err_deg']['median'], 2)} | "
                     f"{_f(b['angle_err_deg']['p95'], 2)} | {_pm(b['rsd_before'], 2)} | {_pm(b['rsd_after'], 2)} | "
                     f"{_pm(b['rsd_true'], 2)} | {_n(b['ratio_err'])} / {_n(b['angle_err_deg'])} |")
        L.append("")
    return L


def _e2e_md(e: dict, res: dict) -> list[str]:
    cfg = res["config"]
    L = ["## 4. End to end", "",
         f"Cubes of {e['scan'][0]} x {e['scan'][1]} frames (one scan patch's frames; descan plane {tuple(cfg['e2e_descan'])} px per "
         f"step, jitter {cfg['e2e_jitter']:g} px, one ellipse ratio {cfg['e2e_ellipse'][0]:g} at {math.degrees(cfg['e2e_ellipse'][1]):.1f}°, "
         "one in-plane rotation, Poisson noise) through `Pipeline.preprocess`, compared with the ideal corrected cube (the "
         "noise-free pattern, zero angle on the frame centre, undistorted). PSNR is per frame (mean ± std); the centre error is "
         "the mean distance to the true centres; RSD is that of the corrected mean pattern (ideal's in the last column). The "
         "classical Gaussian uses the best sigma of table 1 at that dose.", ""]
    if not any(r["method"] == "ours" for r in e["rows"]):
        L += [f"- {LABELS['ours']}: {res['network']}", ""]
    L += ["| dose | cube | method | PSNR vs ideal (dB) | centre error (px) | ratio found | ratio err | angle err (°) | RSD of mean | RSD ideal | N frames |",
          "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in e["rows"]:
        if "error" in r:
            L.append(f"| {r['dose']:.0e} | {r['cube']} | {LABELS[r['method']]} | failed: {r['error']} | | | | | | | |")
            continue
        L.append(f"| {r['dose']:.0e} | {r['cube']} | {LABELS[r['method']]} | {_pm(r['psnr'])} | "
                 f"{_pm(r['center_er']) if r['center_er'] else '–'} | {_f(r['ratio'], 4)} | {_f(r['ratio_err'], 2)} | "
                 f"{_f(r['angle_err_deg'], 2)} | {_f(r['rsd_mean'], 2)} | {_f(r['rsd_ideal'], 2)} | {r['n_frames']} |")
    L.append("")
    return L


def write_report(res: dict, out_dir, command: str | None = None, figures: bool = True) -> Path:
    """Write ``report.md``, ``results.json`` and the PNG figures into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = _figures(res, out) if figures else []
    s = res["set"]
    L = ["# prenet-jax evaluation", "",
         f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by prenet-jax {_version()} (jax {jax.__version__}, "
         f"{jax.default_backend()})." + (f" Command: `{command}`" if command else ""), "",
         "## Data", "",
         f"- source: {s['source']}" + (f" (`{s['root']}`)" if s.get("root") else "") + "; frames "
         f"{s['frame'][0]} x {s['frame'][1]}; structures of the test split only (split by structure id, never seen in training).",
         f"- single patterns: {s['n_single']} ({s['single_by_kind']['crystal']} crystal, {s['single_by_kind']['amorphous']} amorphous) "
         f"from {s['n_groups']} tasks of {s['n_structures']} structures: tables 2 and 3.",
         f"- scan patches: {s['n_scans']} x {s['scan_frames']} frames ({s['scans_by_kind']['crystal']} crystal, "
         f"{s['scans_by_kind']['amorphous']} amorphous patches): tables 1 and 4.",
         f"- doses (incident electrons per pattern, detector gain 1, no read noise): {', '.join(f'{d:g}' for d in res['config']['doses'])}.",
         f"- networks: {res['network']}.",
         f"- peer tools run: {', '.join(f'{k} {v}' for k, v in res['peers'].items()) or 'none (not installed here)'}.",
         "- conventions: centres (row, col) with pixel centres at integers; ellipse angle of the a-axis from +col toward +row, "
         "errors modulo 180°; every cell is mean ± standard deviation over the patterns, with N.", ""]
    if "denoise" in res:
        L += _denoise_md(res["denoise"], res)
    if "centers" in res:
        L += _centers_md(res["centers"], res)
    if "ellipse" in res:
        L += _ellipse_md(res["ellipse"], res)
    if "e2e" in res:
        L += _e2e_md(res["e2e"], res)
    if figs:
        L += ["## Figures", ""] + [f"![{t}]({p.name})\n\n*{t}*\n" for p, t in figs]
    L += ["## Timing", "", ", ".join(f"{k}: {v:.0f} s" for k, v in res["timing"].items()), ""]
    path = out / "report.md"
    path.write_text("\n".join(L))
    (out / "results.json").write_text(json.dumps(_jsonable(res), indent=1))
    return path


def _jsonable(res: dict) -> dict:
    def clean(x, key=""):
        if key in ("examples", "profiles", "errors"):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v, str(k)) for k, v in x.items() if k not in ("examples", "profiles", "errors")}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if isinstance(x, np.ndarray):
            return x.tolist() if x.size < 64 else None
        if isinstance(x, (np.floating, float)):
            return float(x) if math.isfinite(float(x)) else None
        if isinstance(x, np.integer):
            return int(x)
        return x

    return clean(res)


def _version() -> str:
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------- figures

_COLORS = {"input": "0.5", "ours": "C3", "gaussian": "C0", "pca": "C2", "com": "C0", "friedel": "C2",
           "py4dstem_origin": "C1", "py4dstem_friedel": "C4", "pyxem_com": "C5", "fit": "C0", "py4dstem_ring": "C1", "fit_subset": "C9",
           "before": "0.5", "true": "k"}


def _figures(res: dict, out: Path) -> list[tuple[Path, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig, name, title):
        p = out / name
        fig.savefig(p, dpi=90, bbox_inches="tight")
        plt.close(fig)
        made.append((p, title))

    doses = res["config"]["doses"]
    if "denoise" in res:
        d = res["denoise"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, kind in zip(axes, ("crystal", "amorphous")):
            for m in ("input", "gaussian", "pca", "ours"):
                pts = [(r["dose"], r["by_kind"][kind]["psnr"]) for r in d["rows"] if r["method"] == m and kind in r["by_kind"]]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts], marker="o",
                                capsize=3, color=_COLORS[m], label=LABELS[m])
            ax.set_xscale("log")
            ax.set_xlabel("dose (electrons per pattern)")
            ax.set_title(kind)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("PSNR (dB, peak = clean max)")
        axes[0].legend(fontsize=7)
        save(fig, "denoise_psnr.png", "Denoising: PSNR vs dose (mean ± std over frames)")
        ex = d.get("examples", {})
        if ex:
            cols = [k for k in ("noisy", "gaussian", "pca", "ours", "target") if k in next(iter(ex.values()))]
            have = [str(x) for x in doses if str(x) in ex]
            shown = [have[i] for i in sorted({0, len(have) // 2, len(have) - 1})]  # lowest, middle, highest dose
            fig, axes = plt.subplots(len(shown), len(cols), figsize=(2.4 * len(cols), 2.4 * len(shown)), squeeze=False)
            for i, dk in enumerate(shown):
                e = ex[dk]
                vmax = float(np.sqrt(max(e["target"][0].max(), 1e-12)))
                for j, k in enumerate(cols):
                    axes[i, j].imshow(np.sqrt(np.maximum(e[k][0], 0)), cmap="magma", vmin=0, vmax=vmax)
                    axes[i, j].set_xticks([])
                    axes[i, j].set_yticks([])
                    if i == 0:
                        axes[i, j].set_title({"noisy": "noisy", "target": "clean", "gaussian": "Gaussian", "pca": "PCA", "ours": "ours"}[k], fontsize=9)
                axes[i, 0].set_ylabel(f"dose {float(dk):.0e}", fontsize=9)
            save(fig, "denoise_examples.png", "Denoising examples (sqrt intensity, same scale per row)")
    if "centers" in res:
        c = res["centers"]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
        for ax, kind in zip(axes, ("crystal", "amorphous")):
            for m in CENTER_METHODS:
                pts = [(r["dose"], r["by_kind"][kind]["er"]) for r in c["rows"] if r["method"] == m and kind in r["by_kind"]]
                if pts:
                    ax.errorbar([p[0] for p in pts], [p[1]["median"] for p in pts],
                                yerr=[[p[1]["median"] * 0 for p in pts], [p[1]["p95"] - p[1]["median"] for p in pts]],
                                marker="o", capsize=3, color=_COLORS[m], label=LABELS[m])
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("dose (electrons per pattern)")
            ax.set_title(kind)
            ax.grid(alpha=0.3, which="both")
        axes[0].set_ylabel("centre error R (px): median, bar to p95")
        axes[0].legend(fontsize=7)
        save(fig, "centers_error.png", "Beam centres: distance to the true zero angle vs dose")
        errs = c.get("errors", {})
        if errs:
            dk = str(doses[len(doses) // 2])
            fig, ax = plt.subplots(figsize=(6, 3.8))
            for m, e in errs.get(dk, {}).items():
                e = np.asarray(e)
                e = np.sort(e[np.isfinite(e)])
                if e.size:
                    ax.plot(np.maximum(e, 1e-4), np.arange(1, e.size + 1) / e.size, color=_COLORS.get(m), label=LABELS[m])
            ax.set_xscale("log")
            ax.set_xlabel("centre error R (px)")
            ax.set_ylabel("fraction of patterns")
            ax.set_title(f"dose {float(dk):.0e}")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
            save(fig, "centers_cdf.png", f"Beam centres: cumulative distribution of the error at dose {float(dk):.0e}")
    if "ellipse" in res:
        e = res["ellipse"]
        dk = str(doses[len(doses) // 2])
        ex = e.get("profiles", {}).get(dk, {})
        if ex:
            fig, axes = plt.subplots(len(ex), 3, figsize=(14, 3.6 * len(ex)), squeeze=False)
            for i, (kind, x) in enumerate(ex.items()):
                img = np.maximum(x["image"], 0)
                axes[i, 0].imshow(np.log10(img + 1e-4 * img.max() + 1e-30), cmap="magma")
                axes[i, 0].set_title(f"{kind} mean pattern (log), ratio {x['ratio']:.3f} at {math.degrees(x['angle']):.0f}°", fontsize=9)
                axes[i, 0].set_xticks([])
                axes[i, 0].set_yticks([])
                peak = max(float(x["profiles"]["before"][0].max()), 1e-30)
                for name, (mean, std) in x["profiles"].items():
                    lab = "before correction" if name == "before" else LABELS.get(name, name)
                    ls = "--" if name == "true" else "-"
                    axes[i, 1].plot(np.arange(mean.size), np.maximum(mean / peak, 1e-6), ls, color=_COLORS.get(name), label=lab)
                    axes[i, 2].plot(np.arange(std.size), std / peak, ls, color=_COLORS.get(name), label=lab)
                axes[i, 1].set_yscale("log")
                axes[i, 1].set_ylabel("azimuthal mean / peak")
                axes[i, 2].set_yscale("log")
                axes[i, 2].set_ylabel("azimuthal std / peak")
                for ax in axes[i, 1:]:
                    ax.set_xlabel("radius (px)")
                    ax.grid(alpha=0.3, which="both")
                axes[i, 2].legend(fontsize=7)
            save(fig, "ellipse_radial.png", f"Ellipse: radial profile and azimuthal spread per radius before and after correction (dose {float(dk):.0e}); a circular pattern has no spread")
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for m in ELLIPSE_METHODS:
            pts = [(r["dose"], r["by_kind"]["all"]) for r in e["rows"] if r["method"] == m and "all" in r["by_kind"]]
            if pts:
                axes[0].errorbar([p[0] for p in pts], [p[1]["ratio_err"]["mean"] for p in pts], yerr=[p[1]["ratio_err"]["std"] for p in pts],
                                 marker="o", capsize=3, color=_COLORS[m], label=LABELS[m])
                axes[1].errorbar([p[0] for p in pts], [p[1]["angle_err_deg"]["mean"] for p in pts], yerr=[p[1]["angle_err_deg"]["std"] for p in pts],
                                 marker="o", capsize=3, color=_COLORS[m], label=LABELS[m])
        for ax, lab in zip(axes, ("ratio error", f"angle error (°), ratio ≥ {res['config']['angle_min_ratio']:g}")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("dose per frame (electrons)")
            ax.set_ylabel(lab)
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize=7)
        save(fig, "ellipse_error.png", "Ellipse: ratio and angle errors vs dose (all kinds, mean ± std)")
    if "e2e" in res and res["e2e"].get("examples"):
        ex = res["e2e"]["examples"]
        keys = [k for k in ("raw", "none", "classical", "classical_friedel", "ours", "ideal") if k in ex and k != "none"]
        fig, axes = plt.subplots(2, len(keys), figsize=(2.6 * len(keys), 5.4), squeeze=False)
        vmax = float(np.sqrt(max(ex["ideal"]["mean"].max(), 1e-12)))
        for j, k in enumerate(keys):
            for i, what in enumerate(("mean", "frame")):
                axes[i, j].imshow(np.sqrt(np.maximum(ex[k][what], 0)), cmap="magma", vmin=0, vmax=vmax)
                axes[i, j].set_xticks([])
                axes[i, j].set_yticks([])
            axes[0, j].set_title({"raw": "raw", "ideal": "ideal"}.get(k, LABELS.get(k, k)), fontsize=8)
        axes[0, 0].set_ylabel("mean pattern")
        axes[1, 0].set_ylabel("frame (0, 0)")
        save(fig, "e2e.png", "End to end: mean pattern and one frame, raw, processed and ideal (sqrt intensity)")
    return made


# ----------------------------------------------------------------------------- CLI


def _load_network(spec: str | None, frame_size: int) -> tuple[Pipeline | None, str]:
    """``--weights``: a directory, ``auto`` (the bundled ones), ``untrained`` or ``none``."""
    if spec == "none":
        return None, "not evaluated (--weights none)"
    if spec == "untrained":
        size = frame_size
        while size > 32 and size % 2 == 0:
            size //= 2
        cfg = PipelineConfig.tiny(image_size=max(8, size - size % 4))
        return Pipeline.init(jax.random.key(0), cfg), "UNTRAINED tiny networks (random weights: the numbers test the harness, not the method)"
    try:
        pipe = Pipeline.from_pretrained(None if spec in (None, "auto") else spec)
    except FileNotFoundError:
        return None, "no trained weights yet (rows left out; rerun with --weights DIR once training exports them)"
    where = "bundled" if spec in (None, "auto") else spec
    return pipe, f"trained weights ({where}; networks: {', '.join(sorted(pipe.params))})"


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prenet-jax evaluate``."""
    d = EvalConfig()
    p = subparsers.add_parser(
        "evaluate",
        help="reproduce the paper's tables on held-out simulations, against classical methods and peer tools",
        description="Evaluate denoising, beam centres, ellipse and the whole pipeline on held-out (test-split) patterns "
                    "with known truth, beside the classical methods and py4DSTEM / pyxem when installed; writes "
                    "report.md, results.json and PNG figures. See docs/evaluation.md.",
    )
    g = p.add_argument_group("test set")
    g.add_argument("--data", metavar="DIR", help="held-out set directory (written by --generate)")
    g.add_argument("--generate", type=int, metavar="N", help="first simulate N single patterns (+ the scan patches) with abTEM into --data (resumable)")
    g.add_argument("--scans", type=int, default=EvalSetConfig().n_scans, metavar="M", help="scan patches to generate (default %(default)s)")
    g.add_argument("--scan-frames", type=int, default=EvalSetConfig().scan_frames, metavar="F", help="frames per scan patch (default %(default)s)")
    g.add_argument("--gpts", type=int, default=EvalSetConfig().gpts, help="abTEM grid of generated patterns (default %(default)s)")
    g.add_argument("--synthetic", action="store_true", help="use a small analytic set instead (no abTEM; for smoke tests)")
    g.add_argument("--patterns", type=int, metavar="N", help="use at most N single patterns (default all)")
    g.add_argument("--max-scans", type=int, metavar="M", help="use at most M scan patches (default all)")
    g.add_argument("--workers", type=int, default=1, help="abTEM worker processes when generating")
    g = p.add_argument_group("evaluation")
    g.add_argument("--doses", type=float, nargs="+", default=list(d.doses), metavar="D", help="electrons per pattern (default %(default)s)")
    g.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES), help="tables to compute (default all)")
    g.add_argument("--methods", nargs="+", metavar="M", help=f"methods to run (default all available): {', '.join(sorted(set(DENOISE_METHODS + CENTER_METHODS + ELLIPSE_METHODS)))}")
    g.add_argument("--weights", default="auto", metavar="DIR|auto|untrained|none", help="networks: exported weights DIR, the bundled ones (auto, default), untrained tiny networks, or none")
    g.add_argument("--peers", nargs="*", default=["py4dstem", "pyxem"], metavar="PEER", help="peer tools to try (default py4dstem pyxem; each runs where its interpreter is found: PRENET_PY4DSTEM_PYTHON, PRENET_PYXEM_PYTHON, or this one)")
    g.add_argument("--peer-max", type=int, metavar="N", help="at most N frames per dose go to each peer (default: all; 128 mean patterns for the ring fit)")
    g.add_argument("--max-shift", type=float, default=d.max_shift, help="centre table shift range, px (default %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("-o", "--output", default="eval_out", help="report directory (default %(default)s)")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=run_evaluate_cli)
    return p


def evaluate_weights(weights, data, out_dir, *, cfg: EvalConfig = EvalConfig(), tables: Sequence[str] = TABLES,
                     peers: Sequence[str] = ("py4dstem", "pyxem"), log: Callable = print) -> Path:
    """Evaluate exported weights on the held-out set in ``data`` (written by
    :func:`prenet_jax.evaluation.load_or_make`) beside the classical methods and the
    peers found; write the report into ``out_dir``. Returns the path of ``report.md``."""
    from ._peers import available_peers

    es = load_or_make(data)
    net, note = _load_network(str(weights), es.single.shape[-1])
    found = available_peers(tuple(peers)) if peers else {}
    log(f"test set: {es.single.shape[0]} single patterns, {es.scans.shape[0]} x {es.scans.shape[1]} scan frames; networks: {note}; peers: {found or 'none'}")
    methods = Methods(network=net, network_note=note, peers=found)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        res = run_evaluation(es, methods, cfg, tables, log=log)
    return write_report(res, out_dir, f"prenet-jax evaluate --data {data} --weights {weights} -o {out_dir}")


def run_evaluate_cli(args) -> int:
    """``prenet-jax evaluate``: returns the exit code."""
    from ._peers import available_peers

    t0 = time.perf_counter()
    try:
        scfg = EvalSetConfig(scan_frames=args.scan_frames, n_scans=args.scans, gpts=args.gpts)
        es = load_or_make(args.data, args.generate, args.synthetic, scfg, workers=args.workers,
                          max_patterns=args.patterns, max_scans=args.max_scans)
    except (ValueError, RuntimeError) as err:
        print(f"prenet-jax evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"test set: {es.single.shape[0]} single patterns, {es.scans.shape[0]} x {es.scans.shape[1]} scan frames ({es.source}, {time.perf_counter() - t0:.0f} s)")
    net, note = _load_network(args.weights, es.single.shape[-1])
    peers = available_peers(tuple(args.peers)) if args.peers else {}
    print(f"networks: {note}; peers: {peers or 'none'}")
    cfg = EvalConfig(doses=tuple(float(x) for x in args.doses), max_shift=args.max_shift, seed=args.seed, peer_max=args.peer_max)
    methods = Methods(network=net, network_note=note, peers=peers, select=tuple(args.methods) if args.methods else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        res = run_evaluation(es, methods, cfg, args.tables)
    command = "prenet-jax evaluate " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "evaluate" else None
    path = write_report(res, args.output, command, figures=not args.no_figures)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)")
    return 0
