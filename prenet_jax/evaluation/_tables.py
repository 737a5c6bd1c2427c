"""The five tables: every method scored against the known truth, per dose and kind.

1. :func:`evaluate_denoising`: MSE and PSNR of scan patches against the noise-free expectation;
2. :func:`evaluate_centers`: distance of each centre found to the shifted zero angle;
3. :func:`evaluate_ellipse`: ratio and angle errors on mean patterns, radial spread after correction;
4. :func:`evaluate_end_to_end`: small cubes through :meth:`prenet_jax.Pipeline.preprocess`;
5. :func:`evaluate_detector`: the centres again, with each effect of real detectors.

:func:`run_evaluation` runs the tables asked for; :func:`evaluate_weights` is the whole
evaluation of exported weights (set, networks, peers, tables, report), as the training
recipe calls it.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..conventions import Ellipse
from ..ops import correct_ellipse, direct_beam_found, frame_center
from ..pipeline import Pipeline
from ..stages import DENOISE
from . import _metrics as metrics
from ._baselines import (
    gaussian_frames,
    gaussian_search,
    pca_denoise,
    pca_patches,
    pca_search,
)
from ._config import CENTER_PEERS, REFINE, TABLES, EvalConfig, Methods
from ._corrupt import (
    DETECTOR_CASES,
    batches,
    corrupt_scans,
    corrupt_single,
    disk_radii,
    e2e_cube,
    ellipse_samples,
    noisy_means,
)
from ._evalset import EvalSet, load_or_make
from ._pipelines import (
    classical_center_pipelines,
    e2e_pipelines,
    ellipse_pipelines,
    load_network,
    network_center_pipelines,
    network_centers,
    refine_ellipses,
)
from ._report import write_report
from ._stash import Stash, evaluation_key, no_stash
from .peers import available_peers, run_peer

__all__ = [
    "evaluate_centers",
    "evaluate_denoising",
    "evaluate_detector",
    "evaluate_ellipse",
    "evaluate_end_to_end",
    "evaluate_weights",
    "open_stash",
    "run_evaluation",
]

#: How many mean patterns go to py4DSTEM's ring fit when ``peer_max`` is not set: a
#: least-squares fit of ~1e4 pixels each, looped in Python.
RING_FIT_DEFAULT_MAX = 128
_DEFAULT_CONFIG = EvalConfig()


def _kind_masks(kinds: np.ndarray, scope: np.ndarray | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """``(kind, mask)`` for crystal, amorphous and all, within ``scope``; empty ones left out."""
    everything = np.ones(kinds.shape, bool)
    scope = everything if scope is None else scope
    for kind in ("crystal", "amorphous", "all"):
        mask = scope & (everything if kind == "all" else kinds == kind)
        if mask.any():
            yield kind, mask


def _subset(n: int, cap: int | None) -> np.ndarray:
    """At most ``cap`` indices of ``n``, evenly spread (all of them without a cap)."""
    return np.arange(n) if cap is None or cap >= n else np.linspace(0, n - 1, cap).round().astype(int)


# ----------------------------------------------------------------------------- table 1: denoising


def _frame_scores(est: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame MSE and PSNR of ``est`` against ``target`` (any leading shape)."""
    e = est.reshape(-1, *est.shape[-2:])
    t = target.reshape(-1, *target.shape[-2:])
    return {"mse": metrics.mse(e, t), "psnr": metrics.psnr(e, t)}


def _by_kind(values: dict[str, np.ndarray], kinds: np.ndarray) -> dict[str, dict]:
    return {kind: {k: metrics.summarize(v[mask]) for k, v in values.items()} for kind, mask in _kind_masks(kinds)}


def _denoise_all(noisy: np.ndarray, target: np.ndarray, methods: Methods) -> dict[str, tuple[dict, dict | None]]:
    """``{method: (per-frame scores, searched parameters or None)}`` of one dose's patches."""
    results = {"input": (_frame_scores(noisy, target), None)}
    if methods.wants("gaussian"):
        sigma, search = gaussian_search(noisy, target)
        results["gaussian"] = (_frame_scores(gaussian_frames(noisy, sigma), target), {"sigma": sigma, "search": search})
    if methods.wants("pca"):
        rank, search = pca_search(noisy, target)
        results["pca"] = (_frame_scores(pca_patches(noisy, rank), target), {"rank": rank, "search": search})
    if methods.wants("network") and methods.has_net(DENOISE.network):
        den = methods.network.denoise(noisy.reshape(-1, *noisy.shape[-2:])).reshape(noisy.shape)
        results["network"] = (_frame_scores(den, target), None)
    return results


def _denoise_examples(noisy: np.ndarray, target: np.ndarray, results: dict, methods: Methods) -> dict[str, np.ndarray]:
    """The first frame of every patch, noisy, clean and through each method (for the figure)."""
    ex = {"noisy": noisy[:, 0], "target": target[:, 0]}
    if "gaussian" in results:
        ex["gaussian"] = gaussian_frames(noisy[:, 0], results["gaussian"][1]["sigma"])
    if "pca" in results:
        # PCA needs the patch's neighbouring frames: denoise the patch, keep its first frame.
        ex["pca"] = np.stack([pca_denoise(p, results["pca"][1]["rank"])[0] for p in noisy])
    if "network" in results:
        ex["network"] = methods.network.denoise(noisy[:, 0])
    return ex


def _denoise_dose(es: EvalSet, methods: Methods, cfg: EvalConfig, dose: float, log: Callable, keep_examples: bool) -> dict:
    """Table 1 at one dose: ``{"rows", "params", "examples"}``."""
    t0 = time.perf_counter()
    kinds = np.repeat(es.scans_kind, es.scans.shape[1])
    data = corrupt_scans(es, dose, cfg)
    results = _denoise_all(data["noisy"], data["target"], methods)
    inp = results["input"][0]
    rows, params = [], {}
    for name, (scores, par) in results.items():
        values = {**scores, "dpsnr": scores["psnr"] - inp["psnr"], "mse_ratio": scores["mse"] / inp["mse"]}
        rows.append({"dose": dose, "method": name, "by_kind": _by_kind(values, kinds)})
        if par:
            params[name] = par
    examples = _denoise_examples(data["noisy"], data["target"], results, methods) if keep_examples else None
    summary = ", ".join(f"{k} PSNR {np.mean(v[0]['psnr']):.2f} dB" for k, v in results.items())
    log(f"  denoise dose {dose:g}: {summary} ({time.perf_counter() - t0:.0f} s)")
    return {"rows": rows, "params": params, "examples": examples}


def evaluate_denoising(
    es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, keep_examples: bool = True, stash: Stash | None = None
) -> dict:
    """Table 1. Returns ``{"rows": [...], "examples": {...}, "params": {...}}``; each
    dose is a part of ``stash``."""
    stash = stash or no_stash()
    m, f = es.scans.shape[:2]
    rows, params, examples = [], {}, {}
    for dose in cfg.doses:
        part = stash.part(f"denoise_{dose:g}", lambda: _denoise_dose(es, methods, cfg, dose, log, keep_examples))
        rows += part["rows"]
        for name, par in part["params"].items():
            params.setdefault(name, {})[str(dose)] = par
        if part["examples"] is not None:
            examples[str(dose)] = part["examples"]
    return {"rows": rows, "params": params, "examples": examples, "n_frames": int(m * f), "n_patches": int(m)}


# ----------------------------------------------------------------------------- table 2: centres


def _peer_center_jobs(methods: Methods, radii: np.ndarray) -> list[tuple[str, str, str, dict]]:
    """``(method, peer, task, options)`` of the peer centre rows that can run here;
    ``radii``: the direct-disk radius of each frame sent (get_origin needs it)."""
    jobs = []
    if "py4dstem" in methods.peers:
        if methods.wants("py4dstem_origin"):
            jobs.append(("py4dstem_origin", "py4dstem", "get_origin", {"radii": [float(r) for r in radii]}))
        if methods.wants("py4dstem_friedel"):
            jobs.append(("py4dstem_friedel", "py4dstem", "get_origin_friedel", {"upsample": 16}))
    if "pyxem" in methods.peers and methods.wants("pyxem_com"):
        jobs.append(("pyxem_com", "pyxem", "center_direct_beam", {"method": "center_of_mass"}))
    return jobs


def _peer_centers(frames: np.ndarray, sel: np.ndarray, jobs: list, notes: dict, log: Callable) -> dict[str, np.ndarray]:
    """``{method: (N, 2) centres}`` of the peer jobs on the frames ``sel`` (NaN elsewhere);
    a failed job is left out, with its error in ``notes``."""
    found = {}
    for name, peer, task, opts in jobs:
        try:
            res, _ = run_peer(peer, task, frames[sel], opts)
        except RuntimeError as err:
            notes[name] = str(err)[:300]
            log(f"  {name}: {err}")
            continue
        full = np.full((frames.shape[0], 2), np.nan)
        full[sel] = res
        found[name] = full
    return found


def _center_rows(
    found: dict[str, np.ndarray], truth: np.ndarray, kinds: np.ndarray, sel: np.ndarray, dose: float
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The rows of one dose, and ``{method: (N,) distance}`` for the figures."""
    rows, errors = [], {}
    everything = np.ones(len(truth), bool)
    sent = np.isin(np.arange(len(truth)), sel)
    for name, c in found.items():
        e = metrics.center_errors(c, truth)
        # Peers see the frames ``sel``; a NaN elsewhere is a failure of the method.
        scope = sent if name in CENTER_PEERS else everything
        by = {kind: {k: metrics.summarize(e[k][mask]) for k in ("ex", "ey", "er")} for kind, mask in _kind_masks(kinds, scope)}
        rows.append({"dose": dose, "method": name, "by_kind": by})
        errors[name] = e["er"]
    return rows, errors


def evaluate_centers(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, stash: Stash | None = None) -> dict:
    """Table 2. Returns ``{"rows": [...], "errors": {dose: {method: (N,) er}}}``; each
    dose is a part of ``stash``."""
    stash = stash or no_stash()
    rows, errors, notes = [], {}, {}
    classical = classical_center_pipelines(methods, cfg.batch)
    denoiser, network = network_center_pipelines(methods)
    radii = disk_radii(es)
    sel = _subset(es.single.shape[0], cfg.peer_max)
    jobs = _peer_center_jobs(methods, radii[sel])

    def one_dose(dose: float) -> dict:
        t0 = time.perf_counter()
        data = corrupt_single(es, dose, cfg)
        frames = data["noisy"]
        found = {name: p.find_centers(frames) for name, p in classical.items()}
        if network:
            denoised = frames if denoiser is None else denoiser.denoise(frames)
            found.update(network_centers(network, denoised))
        dose_notes: dict = {}
        found.update(_peer_centers(frames, sel, jobs, dose_notes, log))
        dose_rows, dose_errors = _center_rows(found, data["center"], es.single_kind, sel, dose)
        summary = ", ".join(f"{k} MAE-R {np.nanmean(v):.3f} px" for k, v in dose_errors.items())
        log(f"  centres dose {dose:g}: {summary} ({time.perf_counter() - t0:.0f} s)")
        return {"rows": dose_rows, "errors": dose_errors, "notes": dose_notes}

    for dose in cfg.doses:
        part = stash.part(f"centers_{dose:g}", lambda: one_dose(dose))
        rows += part["rows"]
        errors[str(dose)] = part["errors"]
        notes.update(part["notes"])
    return {"rows": rows, "errors": errors, "notes": notes, "n_patterns": int(es.single.shape[0])}


# ----------------------------------------------------------------------------- table 5: real detectors


_beam_found = jax.jit(jax.vmap(direct_beam_found))


def evaluate_detector(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, stash: Stash | None = None) -> dict:
    """Table 5: the centre methods on the same patterns with each effect of real
    detectors (:data:`DETECTOR_CASES`) at ``cfg.detector_dose``, and how often a direct
    beam is found (it should be everywhere but in the "no beam" case).

    Returns ``{"rows": [...], "dose", "n_patterns"}``; each case is a part of ``stash``.
    """
    stash = stash or no_stash()
    classical = classical_center_pipelines(methods, cfg.batch)
    denoiser, network = network_center_pipelines(methods)
    dose = cfg.detector_dose
    rows = []

    def one_case(case: str) -> list[dict]:
        t0 = time.perf_counter()
        data = corrupt_single(es, dose, cfg, **DETECTOR_CASES[case])
        frames = data["noisy"]
        found = {name: p.find_centers(frames) for name, p in classical.items()}
        if network:
            denoised = frames if denoiser is None else denoiser.denoise(frames)
            found.update(network_centers(network, denoised))
        beam = np.concatenate([np.asarray(_beam_found(jnp.asarray(frames[a:b]))) for a, b in batches(len(frames), cfg.batch)])
        out = [
            {
                "case": case,
                "method": "beam_found",
                "by_kind": {k: {"found": float(beam[m].mean()), "n": int(m.sum())} for k, m in _kind_masks(es.single_kind)},
            }
        ]
        if case != "no beam":
            rows_, _ = _center_rows(found, data["center"], es.single_kind, np.arange(0), dose)
            out += [dict(r, case=case) for r in rows_]
        log(
            f"  detector case {case}: beam found in {beam.mean():.0%}"
            + "".join(f", {r['method']} MAE-R {r['by_kind'].get('all', {}).get('er', {}).get('mean', float('nan')):.3f}" for r in out[1:])
            + f" ({time.perf_counter() - t0:.0f} s)"
        )
        return out

    for case in DETECTOR_CASES:
        rows += stash.part(f"detector_{dose:g}_{case}", lambda case=case: one_case(case))
    return {"rows": rows, "dose": dose, "n_patterns": int(es.single.shape[0])}


# ----------------------------------------------------------------------------- table 3: ellipse

_correct_jit = jax.jit(functools.partial(correct_ellipse, method="cubic"))


def _correct(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Undo ``matrix`` about the frame centre (cubic)."""
    return np.asarray(_correct_jit(jnp.asarray(image, jnp.float32), jnp.asarray(matrix, jnp.float32)))


def _corrected(image: np.ndarray, ratio_angle: np.ndarray) -> np.ndarray:
    """``image`` corrected with the ellipse ``(ratio, angle)``."""
    return _correct(image, Ellipse(float(ratio_angle[0]), float(ratio_angle[1])).matrix())


def _fit_annulus(mean: np.ndarray, r_disk: float) -> tuple[float, float]:
    """An annulus for py4DSTEM's ring fit: around the strongest ring outside the direct disk,
    chosen from the azimuthal mean (what a user picks by eye)."""
    radii, prof, _ = metrics.radial_profile(mean)
    lo = 1.3 * r_disk + 2.0
    hi = radii[-1] * 0.95
    sel = (radii > lo) & (radii < hi)
    if not sel.any():
        return float(max(1.0, 0.5 * r_disk)), float(min(hi, 1.5 * r_disk + 4))
    # The ring is the largest excess over a smooth decay: weight the profile by r.
    rr = radii[sel][np.argmax((prof * radii)[sel])]
    w = max(4.0, 0.35 * rr)
    return float(max(lo - 1.0, rr - w)), float(min(hi, rr + w))


def _estimate_ellipses(noisy: np.ndarray, pipes: dict[str, Pipeline]) -> dict[str, np.ndarray]:
    """``{method: (N, 2) (ratio, angle)}`` of each pipeline; NaN where it found no ellipse."""
    est = {}
    for name, p in pipes.items():
        r = np.full((noisy.shape[0], 2), np.nan)
        for i in range(noisy.shape[0]):
            try:
                e = p.estimate_ellipse(noisy[i])
                r[i] = e.ratio, e.angle
            except ValueError:
                pass
        est[name] = r
    return est


def _peer_ellipses(noisy: np.ndarray, radius: np.ndarray, sel: np.ndarray, notes: dict, log: Callable) -> np.ndarray | None:
    """py4DSTEM's ring fit on the mean patterns ``sel`` about the frame centre: ``(N, 2)``
    (ratio, angle), NaN elsewhere; None (the error in ``notes``) when it fails."""
    from ..preprocess import ellipse_from_py4dstem

    c0 = frame_center(noisy.shape[-2:])
    opts = {"centers": [list(c0)] * len(sel), "fitradii": [_fit_annulus(noisy[i], radius[i]) for i in sel]}
    try:
        res, _ = run_peer("py4dstem", "fit_ellipse_amorphous_ring", noisy[sel], opts)
    except RuntimeError as err:
        notes["py4dstem_ring"] = str(err)[:300]
        log(f"  py4dstem_ring: {err}")
        return None
    r = np.full((noisy.shape[0], 2), np.nan)
    for j, i in enumerate(sel):
        _, _, a, b, th = res[j]  # (x0, y0, a, b, theta): the centre is the frame's
        if np.all(np.isfinite(res[j])) and a > 0 and b > 0:
            e = ellipse_from_py4dstem(a, b, th)
            r[i] = e.ratio, e.angle
    notes.setdefault("py4dstem_ring_n", len(sel))
    return r


def _radial_stds(noisy: np.ndarray, est: dict[str, np.ndarray], true_matrices: list) -> dict[str, np.ndarray]:
    """Relative radial standard deviation of every mean pattern before correction, after
    correction with the true ellipse, and with each method's (NaN where it has none)."""
    n = noisy.shape[0]
    rsd = {
        "before": np.array([metrics.radial_std(x) for x in noisy]),
        "true": np.array([metrics.radial_std(_correct(noisy[i], true_matrices[i])) for i in range(n)]),
    }
    for name, r in est.items():
        vals = np.full(n, np.nan)
        for i in range(n):
            if np.all(np.isfinite(r[i])):
                vals[i] = metrics.radial_std(_corrected(noisy[i], r[i]))
        rsd[name] = vals
    return rsd


def _ellipse_rows(dose: float, est: dict, rsd: dict, smp: dict, peer_sel: np.ndarray, cfg: EvalConfig) -> list[dict]:
    """The rows of one dose. The peer's row covers the patterns it saw, and so does a
    ``fit_subset`` row of the edge fit beside it, like for like."""
    n = smp["ratio"].shape[0]
    big = smp["ratio"] >= cfg.angle_min_ratio
    everything = np.ones(n, bool)
    scored = [(name, name, r, everything) for name, r in est.items() if name != "py4dstem_ring"]
    if "py4dstem_ring" in est:
        sub = np.isin(np.arange(n), peer_sel)
        scored.append(("py4dstem_ring", "py4dstem_ring", est["py4dstem_ring"], sub))
        if "fit" in est and not sub.all():
            scored.append(("fit_subset", "fit", est["fit"], sub))
    rows = []
    for name, src, r, scope in scored:
        rerr = metrics.ratio_error(r[:, 0], smp["ratio"])
        aerr = np.degrees(metrics.angle_error(r[:, 1], smp["angle"]))
        by = {
            kind: {
                "ratio_err": metrics.summarize(rerr[s]),
                "angle_err_deg": metrics.summarize(aerr[s & big]),
                "rsd_before": metrics.summarize(rsd["before"][s]),
                "rsd_after": metrics.summarize(rsd[src][s]),
                "rsd_true": metrics.summarize(rsd["true"][s]),
            }
            for kind, s in _kind_masks(smp["kind"], scope)
        }
        rows.append({"dose": dose, "method": name, "by_kind": by})
    return rows


def _ellipse_examples(noisy: np.ndarray, est: dict, smp: dict, true_matrices: list) -> dict[str, dict]:
    """Per kind, the most elliptical mean pattern and its radial profiles before and after
    each correction (for the radial-profile figure)."""
    ex = {}
    for kind in ("crystal", "amorphous"):
        idx = np.flatnonzero(smp["kind"] == kind)
        if not idx.size:
            continue
        i = int(idx[np.argmax(smp["ratio"][idx])])
        prof = {"before": metrics.radial_profile(noisy[i])[1:], "true": metrics.radial_profile(_correct(noisy[i], true_matrices[i]))[1:]}
        for name, r in est.items():
            if np.all(np.isfinite(r[i])):
                prof[name] = metrics.radial_profile(_corrected(noisy[i], r[i]))[1:]
        ex[kind] = {"image": noisy[i], "ratio": float(smp["ratio"][i]), "angle": float(smp["angle"][i]), "profiles": prof}
    return ex


def evaluate_ellipse(es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print, stash: Stash | None = None) -> dict:
    """Table 3 (and the radial-profile figure's data); each dose is a part of ``stash``."""
    stash = stash or no_stash()
    t0 = time.perf_counter()
    smp = ellipse_samples(es, cfg)
    n = smp["ratio"].shape[0]
    log(f"  ellipse: {n} mean patterns ({time.perf_counter() - t0:.0f} s)")
    pipes = ellipse_pipelines(methods)
    peer_sel = _subset(n, cfg.peer_max if cfg.peer_max is not None else RING_FIT_DEFAULT_MAX)
    true_matrices = [Ellipse(float(a), float(b)).matrix() for a, b in zip(smp["ratio"], smp["angle"])]

    def one_dose(dose: float) -> dict:
        t1 = time.perf_counter()
        noisy = noisy_means(smp["expected"], dose, cfg)
        est = _estimate_ellipses(noisy, pipes)
        for name in [m for m in est if methods.wants(m + REFINE)]:
            est[name + REFINE] = refine_ellipses(noisy, est[name])
        dose_notes: dict = {}
        if "py4dstem" in methods.peers and methods.wants("py4dstem_ring"):
            ring = _peer_ellipses(noisy, smp["radius"], peer_sel, dose_notes, log)
            if ring is not None:
                est["py4dstem_ring"] = ring
        rsd = _radial_stds(noisy, est, true_matrices)
        msg = ", ".join(f"{k} ratio err {np.nanmean(metrics.ratio_error(v[:, 0], smp['ratio'])):.4f}" for k, v in est.items())
        log(f"  ellipse dose {dose:g}: {msg} ({time.perf_counter() - t1:.0f} s)")
        return {
            "rows": _ellipse_rows(dose, est, rsd, smp, peer_sel, cfg),
            "profiles": _ellipse_examples(noisy, est, smp, true_matrices),
            "notes": dose_notes,
        }

    rows, notes, profiles = [], {}, {}
    for dose in cfg.doses:
        part = stash.part(f"ellipse_{dose:g}", lambda: one_dose(dose))
        rows += part["rows"]
        profiles[str(dose)] = part["profiles"]
        notes.update(part["notes"])
    return {
        "rows": rows,
        "notes": notes,
        "profiles": profiles,
        "n_samples": int(n),
        "n_groups": int(np.unique(es.single_group).size),
        "n_big": int((smp["ratio"] >= cfg.angle_min_ratio).sum()),
    }


# ----------------------------------------------------------------------------- table 4: end to end


def _e2e_cases(es: EvalSet, cfg: EvalConfig) -> list[tuple[str, int]]:
    """``(label, scan patch index or -1 for the analytic cube)`` of each cube asked for."""
    cases = []
    for kind in ("crystal", "amorphous"):
        idx = np.flatnonzero(es.scans_kind == kind)
        if idx.size and kind in cfg.e2e_cubes:
            cases.append((f"{kind} ({es.scans_id[idx[0]]})", int(idx[0])))
    if "analytic" in cfg.e2e_cubes:
        cases.append(("analytic (synthetic_cube)", -1))
    return cases


def _e2e_data(es: EvalSet, patch: int, dose: float, cfg: EvalConfig, seed: int) -> dict:
    """The cube of scan patch ``patch`` (or the analytic one for -1) with its truth."""
    if patch >= 0:
        return e2e_cube(es.scans[patch], es.scans_zero[patch], dose, cfg, seed)
    from ..data import synthetic_cube

    s = es.scans.shape[-1]
    sc = synthetic_cube(
        scan=cfg.e2e_scan,
        shape=(s, s),
        radius=s / 10,
        ellipse=Ellipse(*cfg.e2e_ellipse),
        descan=cfg.e2e_descan,
        jitter=cfg.e2e_jitter,
        dose=dose,
        seed=cfg.seed,
    )
    return {"cube": sc["cube"], "ideal": sc["ideal"], "centers": sc["centers"], "ellipse": sc["ellipse"]}


def _e2e_row(name: str, res, data: dict, dose: float, label: str, t0: float) -> dict:
    """The row of one pipeline's result ``res`` on one cube; the ``none`` pipeline finds
    no centre and no ellipse, so it has no error for them."""
    scores = _frame_scores(res.data, data["ideal"])
    processed = name != "none"
    ce = metrics.center_errors(res.centers.reshape(-1, 2), data["centers"].reshape(-1, 2)) if processed else None
    return {
        "dose": dose,
        "cube": label,
        "method": name,
        "n_frames": int(res.data.shape[0] * res.data.shape[1]),
        "mse": metrics.summarize(scores["mse"]),
        "psnr": metrics.summarize(scores["psnr"]),
        "center_er": metrics.summarize(ce["er"]) if ce else None,
        "ratio": res.ellipse.ratio,
        "angle_deg": math.degrees(res.ellipse.angle),
        "ratio_err": float(metrics.ratio_error(res.ellipse.ratio, data["ellipse"].ratio)) if processed else None,
        "angle_err_deg": float(np.degrees(metrics.angle_error(res.ellipse.angle, data["ellipse"].angle))) if processed else None,
        "rsd_mean": metrics.radial_std(res.data.mean(axis=(0, 1))),
        "rsd_ideal": metrics.radial_std(data["ideal"].mean(axis=(0, 1))),
        "seconds": time.perf_counter() - t0,
    }


def evaluate_end_to_end(es: EvalSet, methods: Methods, cfg: EvalConfig, sigmas: dict | None = None, log: Callable = print) -> dict:
    """Table 4: one crystal and one amorphous patch as small cubes, plus the analytic
    :func:`prenet_jax.synthetic_cube`, through ``preprocess`` at every dose.

    ``sigmas``: table 1's Gaussian parameters per dose (``{str(dose): {"sigma": ...}}``),
    the classical pipelines' filter; 1 px where missing.
    """
    rows, examples = [], {}
    cases = _e2e_cases(es, cfg)
    example_dose = cfg.doses[len(cfg.doses) // 2]
    for dose in cfg.doses:
        sigma = (sigmas or {}).get(str(dose), {}).get("sigma", 1.0)
        pipes = e2e_pipelines(methods, sigma, min(cfg.batch, cfg.e2e_scan[0] * cfg.e2e_scan[1]))
        for ci, (label, patch) in enumerate(cases):
            data = _e2e_data(es, patch, dose, cfg, cfg.seed * 1000 + ci)
            for name, p in pipes.items():
                t0 = time.perf_counter()
                try:
                    res = p.preprocess(data["cube"])
                except ValueError as err:  # e.g. no ellipse could be fitted
                    rows.append({"dose": dose, "cube": label, "method": name, "error": str(err)[:200]})
                    continue
                rows.append(_e2e_row(name, res, data, dose, label, t0))
                if dose == example_dose and ci == 0:
                    examples[name] = {"mean": res.data.mean(axis=(0, 1)), "frame": res.data[0, 0]}
                    examples["raw"] = {"mean": data["cube"].mean(axis=(0, 1)), "frame": data["cube"][0, 0]}
                    examples["ideal"] = {"mean": data["ideal"].mean(axis=(0, 1)), "frame": data["ideal"][0, 0]}
        summary = ", ".join(
            f"{r['method']}@{r['cube'].split()[0]} PSNR {r['psnr']['mean']:.1f}" for r in rows if r["dose"] == dose and "psnr" in r
        )
        log(f"  end to end dose {dose:g}: {summary}")
    return {"rows": rows, "examples": examples, "scan": list(cfg.e2e_scan)}


# ----------------------------------------------------------------------------- the run


def _set_summary(es: EvalSet) -> dict:
    out = {
        "source": es.source,
        "n_single": int(es.single.shape[0]),
        "frame": list(es.single.shape[-2:]),
        "n_groups": int(np.unique(es.single_group).size),
        "n_structures": int(np.unique(es.single_id).size),
        "single_by_kind": {k: int((es.single_kind == k).sum()) for k in ("crystal", "amorphous")},
        "n_scans": int(es.scans.shape[0]),
        "scan_frames": int(es.scans.shape[1]),
        "scans_by_kind": {k: int((es.scans_kind == k).sum()) for k in ("crystal", "amorphous")},
        "structures": sorted(set(es.single_id.tolist())),
        "scan_structures": es.scans_id.tolist(),
        "n_grids": int(es.grids.shape[0]),
        "grid_structures": es.grids_id.tolist(),
    }
    out.update({k: v for k, v in es.info.items() if k in ("root", "config")})
    return out


def open_stash(root, es: EvalSet, methods: Methods, cfg: EvalConfig, log: Callable = print) -> Stash:
    """The stash of finished parts for this evaluation under ``root`` (None: none)."""
    if root is None:
        return no_stash()
    return Stash(root, evaluation_key(cfg.to_dict(), es, methods), log)


def run_evaluation(
    es: EvalSet,
    methods: Methods,
    cfg: EvalConfig = _DEFAULT_CONFIG,
    tables: Sequence[str] = TABLES,
    log: Callable = print,
    stash: Stash | None = None,
) -> dict:
    """Run the selected tables; returns everything the report needs (JSON-able except
    the ``examples``/``profiles``/``errors`` arrays, which only the figures use).

    With a ``stash`` (:func:`open_stash`), each finished dose of a table (table 4 as a
    whole) is kept, and a rerun after an interruption starts after the last one.
    """
    stash = stash or no_stash()
    res: dict = {
        "config": cfg.to_dict(),
        "set": _set_summary(es),
        "network": methods.network_note,
        "peers": dict(methods.peers),
        "tables": list(tables),
        "timing": {},
    }
    for t in tables:
        t0 = time.perf_counter()
        log(f"{t} ...")
        if t == "denoise":
            res["denoise"] = evaluate_denoising(es, methods, cfg, log, stash=stash)
        elif t == "scans":
            from ._scan_table import evaluate_scan_denoising

            res["scans"] = evaluate_scan_denoising(es, methods, cfg, log, stash=stash)
        elif t == "centers":
            res["centers"] = evaluate_centers(es, methods, cfg, log, stash=stash)
        elif t == "ellipse":
            res["ellipse"] = evaluate_ellipse(es, methods, cfg, log, stash=stash)
        elif t == "e2e":
            # The classical pipelines filter with table 1's best sigma when it ran.
            sigmas = res.get("denoise", {}).get("params", {}).get("gaussian")
            # (a part of its own: the rows depend on whether table 1 ran first)
            name = "e2e_table1_sigma" if sigmas else "e2e_default_sigma"
            res["e2e"] = stash.part(name, lambda: evaluate_end_to_end(es, methods, cfg, sigmas, log))
        elif t == "detector":
            res["detector"] = evaluate_detector(es, methods, cfg, log, stash=stash)
        else:
            raise ValueError(f"unknown table {t!r}: use {TABLES}")
        res["timing"][t] = time.perf_counter() - t0
    res["parts_reused"] = stash.reused
    return res


def evaluate_weights(
    weights,
    data,
    out_dir,
    *,
    cfg: EvalConfig = _DEFAULT_CONFIG,
    tables: Sequence[str] = TABLES,
    peers: Sequence[str] = ("py4dstem", "pyxem"),
    log: Callable = print,
    stash_dir=None,
) -> Path:
    """Evaluate exported weights on the held-out set in ``data`` (written by
    :func:`prenet_jax.evaluation.load_or_make`) beside the classical methods and the
    peers found; write the report into ``out_dir``. Returns the path of ``report.md``.
    With ``stash_dir``, an interrupted evaluation resumes after its last finished part
    (:func:`run_evaluation`); the parts are removed once the report is written."""
    es = load_or_make(data)
    net, note = load_network(str(weights), es.single.shape[-1])
    found = available_peers(tuple(peers)) if peers else {}
    log(
        f"test set: {es.single.shape[0]} single patterns, {es.scans.shape[0]} x {es.scans.shape[1]} scan frames; networks: {note}; peers: {found or 'none'}"
    )
    methods = Methods(network=net, network_note=note, peers=found)
    stash = open_stash(stash_dir, es, methods, cfg, log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        res = run_evaluation(es, methods, cfg, tables, log=log, stash=stash)
    path = write_report(res, out_dir, f"prenet-jax evaluate --data {data} --weights {weights} -o {out_dir}")
    stash.clear()
    return path
