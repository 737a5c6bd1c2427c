"""Table 1b: denoising whole scans (the held-out set's raster scans, ``grids``).

Each raster scan (``grid_size x grid_size`` probe positions of one test-split structure,
in scan order) is moved by a descan plane plus a per-frame jitter
(:func:`prenet_jax.evaluation.corrupt_grid`) and given Poisson noise at each dose. Rows:

- ``input``: the noisy frames;
- ``gaussian``: the Gaussian whose sigma is best in hindsight for that dose (chosen on
  these frames: an upper bound of the filter);
- ``default``: the frame-by-frame denoiser that ships (the risk-chosen Gaussian);
- ``neighbours``: the mean of the 3 x 3 scan neighbours as recorded (no alignment), then
  the Gaussian best in hindsight;
- ``pca``: Poisson-scaled SVD/PCA of each scan at its best rank in hindsight;
- ``scan``: the scan denoiser (:func:`prenet_jax.pipeline.scan_gaussian`).

The ``risk`` entry gives the scan denoiser's estimated MSE over its true MSE, per scan
(the estimate that chose each frame's window).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from . import _metrics as metrics
from ._baselines import gaussian_frames, gaussian_search, pca_denoise
from ._config import SCAN_METHODS, EvalConfig, Methods
from ._corrupt import corrupt_grid
from ._evalset import EvalSet
from ._stash import Stash, no_stash

__all__ = ["SCAN_METHODS", "SCAN_RANKS", "evaluate_scan_denoising", "neighbour_mean"]
#: PCA ranks searched per scan (those below its frame count).
SCAN_RANKS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


def neighbour_mean(scan: np.ndarray) -> np.ndarray:
    """``(Rx, Ry, H, W)`` -> the mean of each frame's 3 x 3 scan neighbours as recorded
    (those inside the scan)."""
    rx, ry = scan.shape[:2]
    out = np.zeros(scan.shape, np.float64)
    count = np.zeros((rx, ry, 1, 1))
    for a in (-1, 0, 1):
        for b in (-1, 0, 1):
            t = (slice(max(0, -a), rx - max(0, a)), slice(max(0, -b), ry - max(0, b)))
            s = (slice(max(0, a), rx + min(0, a)), slice(max(0, b), ry + min(0, b)))
            out[t] += scan[s]
            count[t] += 1
    return (out / count).astype(np.float32)


def _pca_best(scan: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, int]:
    flat = scan.reshape(-1, *scan.shape[2:])
    tf = target.reshape(flat.shape)
    best, best_psnr, best_rank = None, -np.inf, 0
    for r in SCAN_RANKS:
        if r >= flat.shape[0]:
            continue
        est = pca_denoise(flat, r)
        p = float(np.mean(metrics.psnr(est, tf)))
        if p > best_psnr:
            best, best_psnr, best_rank = est, p, r
    return best.reshape(scan.shape), best_rank


def _scan_dose(es: EvalSet, methods: Methods, cfg: EvalConfig, dose: float, log: Callable) -> dict:
    from ..pipeline import Pipeline, scan_gaussian

    t0 = time.perf_counter()
    per_frame = Pipeline.classical(center_method="none", ellipse_method="none")
    data = [corrupt_grid(es, g, dose, cfg) for g in range(es.grids.shape[0])]
    shape = es.grids.shape[-2:]
    noisy = np.stack([d["noisy"] for d in data])
    target = np.stack([d["target"] for d in data])
    flat_n, flat_t = noisy.reshape(-1, *shape), target.reshape(-1, *shape)
    est: dict[str, np.ndarray] = {"input": noisy}
    params: dict[str, dict] = {}
    risk: list[float] = []
    if methods.wants("gaussian"):
        sigma, _ = gaussian_search(flat_n, flat_t)
        est["gaussian"], params["gaussian"] = gaussian_frames(flat_n, sigma).reshape(noisy.shape), {"sigma": sigma}
    if methods.wants("default"):
        est["default"] = per_frame.denoise(flat_n).reshape(noisy.shape)
    if methods.wants("neighbours"):
        nb = np.stack([neighbour_mean(s) for s in noisy]).reshape(flat_n.shape)
        sigma, _ = gaussian_search(nb, flat_t)
        est["neighbours"], params["neighbours"] = gaussian_frames(nb, sigma).reshape(noisy.shape), {"sigma": sigma}
    if methods.wants("pca"):
        found = [_pca_best(s, t) for s, t in zip(noisy, target)]
        est["pca"], params["pca"] = np.stack([f[0] for f in found]), {"ranks": [f[1] for f in found]}
    refused: list[str] = []
    if methods.wants("scan"):
        out = []
        for g, (s, t) in enumerate(zip(noisy, target)):
            try:
                r = scan_gaussian(s)
            except ValueError as err:  # what the file path does: frame by frame instead, said
                refused.append(f"{es.grids_id[g]}: {err}")
                out.append(per_frame.denoise(s.reshape(-1, *shape)).reshape(s.shape))
                risk.append(float("nan"))
                continue
            out.append(r.frames)
            risk.append(float(np.mean(r.risk) / np.mean((r.frames.astype(np.float64) - t) ** 2)))
        est["scan"] = np.stack(out)
    kinds = np.repeat(es.grids_kind, noisy.shape[1] * noisy.shape[2])
    psnr_in = metrics.psnr(flat_n, flat_t)
    rows = []
    for name, e in est.items():
        p = metrics.psnr(e.reshape(flat_n.shape), flat_t)
        values = {"psnr": p, "dpsnr": p - psnr_in}
        by_kind = {k: {n: metrics.summarize(v[kinds == k]) for n, v in values.items()} for k in np.unique(kinds)}
        rows.append({"dose": dose, "method": name, "by_kind": by_kind})
    log(
        f"  scans dose {dose:g}: "
        + ", ".join(f"{k} PSNR {np.mean(metrics.psnr(v.reshape(flat_n.shape), flat_t)):.2f} dB" for k, v in est.items())
        + f" ({time.perf_counter() - t0:.0f} s)"
    )
    return {"rows": rows, "params": params, "risk": {"ratio": risk, "kind": [str(k) for k in es.grids_kind], "refused": refused}}


def evaluate_scan_denoising(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, stash: Stash | None = None) -> dict:
    """Table 1b (module docstring). Returns ``{"rows", "params", "risk", "n_scans",
    "scan"}``; an empty ``rows`` where the set has no raster scans."""
    stash = stash or no_stash()
    if es.grids.shape[0] == 0:
        return {"rows": [], "params": {}, "risk": {}, "n_scans": 0, "scan": [0, 0]}
    rows, params, risk = [], {}, {}
    for dose in cfg.doses:
        part = stash.part(f"scans_{dose:g}", lambda: _scan_dose(es, methods, cfg, dose, log))
        rows += part["rows"]
        for name, par in part["params"].items():
            params.setdefault(name, {})[str(dose)] = par
        risk[str(dose)] = part["risk"]
    return {"rows": rows, "params": params, "risk": risk, "n_scans": int(es.grids.shape[0]), "scan": list(es.grids.shape[1:3])}
