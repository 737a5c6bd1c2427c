"""The report of an evaluation: ``report.md`` (one section per table), ``results.json``
(every number) and the figures (:mod:`prenet_jax.evaluation._figures`).

Every cell is ``mean ± std`` over the test patterns, with N; a method that did not run
is listed with the reason instead of a row.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from . import _metrics as metrics
from ._config import (
    CENTER_METHODS,
    CENTER_PEERS,
    DENOISE_METHODS,
    ELLIPSE_METHODS,
    ELLIPSE_PEERS,
    LABELS,
)
from ._figures import write_figures

__all__ = ["write_report", "write_results_json"]

#: What results.json leaves out: the arrays only the figures use.
_FIGURE_DATA = ("examples", "profiles", "errors")


def _number(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; "–" for None, "inf"/"n/a" for non-finite."""
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else "n/a"
    return f"{x:.{digits}g}"


def _mean_std(stat: dict | None, digits: int = 3) -> str:
    """A summary (:func:`prenet_jax.evaluation._metrics.summarize`) as "mean ± std"."""
    return metrics.format_stat(stat, digits) if stat else "n/a"


def _count(stat: dict | None) -> str:
    """The N of a summary, with its failures."""
    if not stat:
        return "0"
    return f"{stat['n']}" + (f" ({stat['n_failed']} failed)" if stat.get("n_failed") else "")


def _missing_methods(present: set, candidates: Sequence[str], network_note: str, notes: dict, peer_for: dict) -> list[str]:
    """One line per candidate method without rows: the network's note, or why a peer did not run."""
    lines = []
    for m in candidates:
        if m in present:
            continue
        if m == "network":
            if "networks:" in network_note:  # weights without this stage's network
                lines.append(f"- {LABELS[m]}: not in these weights, whose pipeline runs the classical method here ({network_note})")
            else:
                lines.append(f"- {LABELS[m]}: {network_note}")
        elif m in peer_for:
            note = notes.get(m)
            lines.append(f"- {LABELS[m]}: " + (f"failed ({note})" if note else f"not run ({peer_for[m]} not installed here)"))
    return lines


def _end_paragraph(lines: list[str]) -> None:
    if lines[-1] != "":
        lines.append("")


def _denoise_md(d: dict, res: dict) -> list[str]:
    intro = (
        f"{d['n_patches']} scan patches x {d['n_frames'] // max(d['n_patches'], 1)} neighbouring frames = {d['n_frames']} frames "
        "per dose. MSE is relative to the clean frame's peak (peak = 1); PSNR in dB with that peak. Each cell: mean ± standard "
        "deviation over the frames; N frames. 'MSE out/in' is the median over frames of the per-frame ratio (below 1: better "
        "than the input). The Gaussian sigma and the PCA rank are those with the highest mean PSNR at that dose, chosen on "
        "these frames (an upper bound of each baseline)."
    )
    lines = ["## 1. Denoising", "", intro, ""]
    lines += _missing_methods({r["method"] for r in d["rows"]}, DENOISE_METHODS, res["network"], {}, {})
    _end_paragraph(lines)
    for kind in ("crystal", "amorphous"):
        rows = [r for r in d["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        lines += [
            f"### {kind.capitalize()}",
            "",
            "| dose (e⁻/pattern) | method | MSE | PSNR (dB) | ΔPSNR (dB) | MSE out/in (median) | parameter | N |",
            "|---:|---|---:|---:|---:|---:|---|---:|",
        ]
        for r in rows:
            b = r["by_kind"][kind]
            par = d["params"].get(r["method"], {}).get(str(r["dose"]), {})
            ptxt = f"σ = {par['sigma']:g} px" if "sigma" in par else f"rank {par['rank']}" if "rank" in par else ""
            is_input = r["method"] == "input"
            lines.append(
                f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_mean_std(b['mse'])} | {_mean_std(b['psnr'])} | "
                f"{'–' if is_input else _mean_std(b['dpsnr'])} | {'–' if is_input else _number(b['mse_ratio']['median'])} | "
                f"{ptxt} | {_count(b['mse'])} |"
            )
        lines.append("")
    return lines


def _scans_md(d: dict, res: dict) -> list[str]:
    lines = ["## 1b. Denoising whole scans", ""]
    if not d["rows"]:
        return lines + ["The held-out set has no raster scans (`EvalSetConfig.n_grids`): nothing to show.", ""]
    n = d["scan"]
    lines += [
        f"{d['n_scans']} raster scans of {n[0]}x{n[1]} probe positions (test-split structures), moved by a descan plane "
        "plus a per-frame jitter, Poisson noise. PSNR in dB with the clean frame's peak; mean ± standard deviation over the "
        "frames. The sigmas and ranks of the baselines are the best in hindsight at each dose (upper bounds). 'risk/true': "
        "the scan denoiser's estimated MSE over its true MSE, per scan (median, min-max).",
        "",
    ]
    for kind in ("crystal", "amorphous"):
        rows = [r for r in d["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        lines += [
            f"### {kind.capitalize()}",
            "",
            "| dose (e⁻/pattern) | method | PSNR (dB) | ΔPSNR (dB) | parameter | N |",
            "|---:|---|---:|---:|---|---:|",
        ]
        for r in rows:
            b = r["by_kind"][kind]
            par = d["params"].get(r["method"], {}).get(str(r["dose"]), {})
            ptxt = f"σ = {par['sigma']:g} px" if "sigma" in par else f"ranks {par['ranks']}" if "ranks" in par else ""
            if r["method"] == "scan":
                rk = d["risk"][str(r["dose"])]
                ratios = [x for x, k in zip(rk["ratio"], rk["kind"]) if k == kind and np.isfinite(x)]
                if ratios:
                    ptxt = f"risk/true {np.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
                n_ref = sum(1 for x, k in zip(rk["ratio"], rk["kind"]) if k == kind and not np.isfinite(x))
                if n_ref:
                    ptxt += f"; {n_ref} scan(s) refused (not counts): frame by frame there"
            dp = "–" if r["method"] == "input" else _mean_std(b["dpsnr"], 3)
            lines.append(f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_mean_std(b['psnr'], 4)} | {dp} | {ptxt} | {_count(b['psnr'])} |")
        lines.append("")
    return lines


def _centers_md(c: dict, res: dict) -> list[str]:
    intro = (
        f"{c['n_patterns']} single patterns per dose, zero angle shifted uniformly by up to ±{res['config']['max_shift']:g} px "
        "per axis, rotated and elliptically distorted; the label is the zero angle plus the shift. MAE-X = mean |Δcol|, "
        "MAE-Y = mean |Δrow|, MAE-R = mean distance (px), each ± its standard deviation; median and 95th percentile of the "
        "distance; N patterns (failures are non-finite answers)."
    )
    lines = ["## 2. Beam centres", "", intro, ""]
    lines += _missing_methods({r["method"] for r in c["rows"]}, CENTER_METHODS, res["network"], c.get("notes", {}), CENTER_PEERS)
    _end_paragraph(lines)
    for kind in ("crystal", "amorphous"):
        rows = [r for r in c["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        lines += [
            f"### {kind.capitalize()}",
            "",
            "| dose (e⁻/pattern) | method | MAE-X (px) | MAE-Y (px) | MAE-R (px) | median R | p95 R | N |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            b = r["by_kind"][kind]
            lines.append(
                f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_mean_std(b['ex'])} | {_mean_std(b['ey'])} | {_mean_std(b['er'])} | "
                f"{_number(b['er']['median'])} | {_number(b['er']['p95'])} | {_count(b['er'])} |"
            )
        lines.append("")
    return lines


def _ellipse_md(e: dict, res: dict) -> list[str]:
    cfg = res["config"]
    intro = (
        f"{e['n_samples']} recentred mean patterns per dose ({e['n_groups']} tasks x {cfg['ellipses_per_group']} random ellipses, "
        f"ratio uniform in [{cfg['ratio_range'][0]:g}, {cfg['ratio_range'][1]:g}], angle uniform); each is the task's patterns "
        f"averaged over {cfg['rotations']} in-plane rotations with the noise of {cfg['mean_frames']} frames at the dose. "
        f"Angle error (degrees, modulo 180°) only for ratio ≥ {cfg['angle_min_ratio']:g} ({e['n_big']} of {e['n_samples']}). "
        "RSD: relative radial standard deviation (Σ_r std_φ / Σ_r mean_φ of the polar image; 0 = circular) before correction, "
        "after correction with the method's ellipse, and with the true ellipse (the floor left by the pattern's own anisotropy)."
    )
    lines = ["## 3. Ellipse", "", intro, ""]
    notes = e.get("notes", {})
    lines += _missing_methods({r["method"] for r in e["rows"]}, ELLIPSE_METHODS, res["network"], notes, ELLIPSE_PEERS)
    if "py4dstem_ring_n" in notes:
        lines.append(
            f"- py4DSTEM fit_ellipse_amorphous_ring runs on {notes['py4dstem_ring_n']} evenly chosen mean patterns per "
            "dose (a least-squares fit of ~10⁴ pixels each), annulus around the strongest ring outside the direct disk."
        )
    _end_paragraph(lines)
    for kind in ("crystal", "amorphous"):
        rows = [r for r in e["rows"] if kind in r["by_kind"]]
        if not rows:
            continue
        lines += [
            f"### {kind.capitalize()}",
            "",
            "| dose (e⁻/pattern) | method | ratio error | median | p95 | angle error (°) | median | p95 | RSD before | RSD after | RSD true | N (ratio / angle) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            b = r["by_kind"][kind]
            ratio, angle = b["ratio_err"], b["angle_err_deg"]
            lines.append(
                f"| {r['dose']:.0e} | {LABELS[r['method']]} | {_mean_std(ratio, 2)} | {_number(ratio['median'], 2)} | "
                f"{_number(ratio['p95'], 2)} | {_mean_std(angle, 2)} | {_number(angle['median'], 2)} | "
                f"{_number(angle['p95'], 2)} | {_mean_std(b['rsd_before'], 2)} | {_mean_std(b['rsd_after'], 2)} | "
                f"{_mean_std(b['rsd_true'], 2)} | {_count(ratio)} / {_count(angle)} |"
            )
        lines.append("")
    return lines


def _e2e_md(e: dict, res: dict) -> list[str]:
    cfg = res["config"]
    intro = (
        f"Cubes of {e['scan'][0]} x {e['scan'][1]} frames (one scan patch's frames; descan plane {tuple(cfg['e2e_descan'])} px per "
        f"step, jitter {cfg['e2e_jitter']:g} px, one ellipse ratio {cfg['e2e_ellipse'][0]:g} at {math.degrees(cfg['e2e_ellipse'][1]):.1f}°, "
        "one in-plane rotation, Poisson noise) through `Pipeline.preprocess`, compared with the ideal corrected cube (the "
        "noise-free pattern, zero angle on the frame centre, undistorted). PSNR is per frame (mean ± std); the centre error is "
        "the mean distance to the true centres; RSD is that of the corrected mean pattern (ideal's in the last column). The "
        "classical Gaussian uses the best sigma of table 1 at that dose."
    )
    lines = ["## 4. End to end", "", intro, ""]
    if not any(r["method"] == "network" for r in e["rows"]):
        lines += [f"- {LABELS['network']}: {res['network']}", ""]
    lines += [
        "| dose | cube | method | PSNR vs ideal (dB) | centre error (px) | ratio found | ratio err | angle err (°) | RSD of mean | RSD ideal | N frames |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in e["rows"]:
        if "error" in r:
            lines.append(f"| {r['dose']:.0e} | {r['cube']} | {LABELS[r['method']]} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {r['dose']:.0e} | {r['cube']} | {LABELS[r['method']]} | {_mean_std(r['psnr'])} | "
            f"{_mean_std(r['center_er']) if r['center_er'] else '–'} | {_number(r['ratio'], 4)} | {_number(r['ratio_err'], 2)} | "
            f"{_number(r['angle_err_deg'], 2)} | {_number(r['rsd_mean'], 2)} | {_number(r['rsd_ideal'], 2)} | {r['n_frames']} |"
        )
    lines.append("")
    return lines


def _data_md(res: dict, command: str | None) -> list[str]:
    """The title, how the report was made, and the held-out data it ran on."""
    s = res["set"]
    generated = (
        f"Generated {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by prenet-jax {_version()} "
        f"(jax {jax.__version__}, {jax.default_backend()})."
    ) + (f" Command: `{command}`" if command else "")
    root = f" (`{s['root']}`)" if s.get("root") else ""
    return [
        "# prenet-jax evaluation",
        "",
        generated,
        "",
        "## Data",
        "",
        (
            f"- source: {s['source']}{root}; frames {s['frame'][0]} x {s['frame'][1]}; structures of the test split only "
            "(split by structure id, never seen in training)."
        ),
        (
            f"- single patterns: {s['n_single']} ({s['single_by_kind']['crystal']} crystal, {s['single_by_kind']['amorphous']} amorphous) "
            f"from {s['n_groups']} tasks of {s['n_structures']} structures: tables 2 and 3."
        ),
        (
            f"- scan patches: {s['n_scans']} x {s['scan_frames']} frames ({s['scans_by_kind']['crystal']} crystal, "
            f"{s['scans_by_kind']['amorphous']} amorphous patches): tables 1 and 4."
        ),
        f"- doses (incident electrons per pattern, detector gain 1, no read noise): {', '.join(f'{d:g}' for d in res['config']['doses'])}.",
        f"- networks: {res['network']}.",
        f"- peer tools run: {', '.join(f'{k} {v}' for k, v in res['peers'].items()) or 'none (not installed here)'}.",
        (
            "- conventions: centres (row, col) with pixel centres at integers; ellipse angle of the a-axis from +col toward +row, "
            "errors modulo 180°; every cell is mean ± standard deviation over the patterns, with N."
        ),
        "",
    ]


def _detector_md(t: dict, res: dict) -> list[str]:
    intro = (
        f"The {t['n_patterns']} single patterns of table 2 (same shifts, rotations and ellipses) at {t['dose']:.0e} electrons, "
        "each time with one effect of real detectors on every pattern (prenet_jax.corruption): saturated flat-topped disks "
        "(clipped at 5-60 % of the peak), the beam centre 4 px outside to 24 px inside a frame edge, the direct disk dimmed "
        "to 5-50 %, Kikuchi bands and diffuse lobes adding 10-100 % of the counts, "
        "and no beam at all (panel gaps and hot pixels sit at fixed pixels, which a file run masks: not here). MAE-R, median and p95 of the centre distance (px); 'beam found': the share of patterns in which "
        "ops.direct_beam_found sees a direct beam (right: 100 %, but 0 % with no beam)."
    )
    lines = ["## 5. What real detectors add", "", intro, ""]
    lines += [
        "| effect | beam found | method | crystal MAE-R | median | p95 | amorphous MAE-R | median | p95 |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    found = {r["case"]: r["by_kind"].get("all", {}).get("found") for r in t["rows"] if r["method"] == "beam_found"}
    for r in t["rows"]:
        if r["method"] == "beam_found":
            if r["case"] == "no beam":
                lines.append(f"| no beam | {_number(100 * found['no beam'], 3)} % | – | | | | | | |")
            continue
        cells = []
        for kind in ("crystal", "amorphous"):
            er = r["by_kind"].get(kind, {}).get("er")
            cells += [_mean_std(er), _number(er["median"]) if er else "–", _number(er["p95"]) if er else "–"]
        f = found.get(r["case"])
        lines.append(
            f"| {r['case']} | {_number(100 * f, 3) + ' %' if f is not None else '–'} | {LABELS[r['method']]} | " + " | ".join(cells) + " |"
        )
    return lines + [""]


_SECTIONS = (
    ("denoise", _denoise_md),
    ("scans", _scans_md),
    ("centers", _centers_md),
    ("ellipse", _ellipse_md),
    ("e2e", _e2e_md),
    ("detector", _detector_md),
)


def write_report(res: dict, out_dir, command: str | None = None, figures: bool = True) -> Path:
    """Write ``report.md``, ``results.json`` and the PNG figures into ``out_dir``.

    Parameters
    ----------
    res : the result of :func:`prenet_jax.evaluation.run_evaluation`
    out_dir : the report directory (created)
    command : the command line the report names, if any
    figures : also draw the figures

    Returns
    -------
    The path of ``report.md``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = write_figures(res, out) if figures else []
    lines = _data_md(res, command)
    for table, section in _SECTIONS:
        if table in res:
            lines += section(res[table], res)
    if figs:
        lines += ["## Figures", ""] + [f"![{title}]({path.name})\n\n*{title}*\n" for path, title in figs]
    timing = ", ".join(f"{k}: {v:.0f} s" for k, v in res["timing"].items())
    if res.get("parts_reused"):
        timing += f" (after an interruption: {res['parts_reused']} finished parts were reused, their time is not counted)"
    lines += ["## Timing", "", timing, ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    write_results_json(res, out / "results.json")
    return path


def write_results_json(res: dict, path) -> None:
    """Every number of ``res`` as JSON: the figures' arrays left out, non-finite values as null."""
    Path(path).write_text(json.dumps(_jsonable(res), indent=1))


def _jsonable(x, key: str = ""):
    if key in _FIGURE_DATA:
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v, str(k)) for k, v in x.items() if k not in _FIGURE_DATA}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist() if x.size < 64 else None  # a small array is a parameter; a large one is an image
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _version() -> str:
    from .. import __version__

    return __version__
