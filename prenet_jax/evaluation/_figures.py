"""The report's figures, one function each: ``(figure, file name, caption)`` from the
results of :func:`prenet_jax.evaluation.run_evaluation`, or None when its table did
not run. :func:`write_figures` draws and saves them all.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ._config import CENTER_METHODS, ELLIPSE_METHODS, LABELS

__all__ = ["COLORS", "write_figures"]

#: One colour per method (the same in every figure), and for the reference curves.
COLORS = {
    "input": "0.5",
    "network": "C3",
    "gaussian": "C0",
    "pca": "C2",
    "com": "C0",
    "friedel": "C2",
    "py4dstem_origin": "C1",
    "py4dstem_friedel": "C4",
    "pyxem_com": "C5",
    "fit": "C0",
    "py4dstem_ring": "C1",
    "fit_subset": "C9",
    "before": "0.5",
    "true": "k",
}


def _middle_dose(res: dict) -> str:
    """The key of the middle dose, the one single-dose figures show."""
    doses = res["config"]["doses"]
    return str(doses[len(doses) // 2])


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _denoise_psnr(plt, res: dict):
    if "denoise" not in res:
        return None
    rows = res["denoise"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind in zip(axes, ("crystal", "amorphous")):
        for m in ("input", "gaussian", "pca", "network"):
            pts = [(r["dose"], r["by_kind"][kind]["psnr"]) for r in rows if r["method"] == m and kind in r["by_kind"]]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1]["mean"] for p in pts],
                    yerr=[p[1]["std"] for p in pts],
                    marker="o",
                    capsize=3,
                    color=COLORS[m],
                    label=LABELS[m],
                )
        ax.set_xscale("log")
        ax.set_xlabel("dose (electrons per pattern)")
        ax.set_title(kind)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB, peak = clean max)")
    axes[0].legend(fontsize=7)
    return fig, "denoise_psnr.png", "Denoising: PSNR vs dose (mean ± std over frames)"


def _denoise_examples(plt, res: dict):
    ex = res.get("denoise", {}).get("examples", {})
    if not ex:
        return None
    titles = {"noisy": "noisy", "gaussian": "Gaussian", "pca": "PCA", "network": "network", "target": "clean"}
    cols = [k for k in titles if k in next(iter(ex.values()))]
    have = [str(x) for x in res["config"]["doses"] if str(x) in ex]
    shown = [have[i] for i in sorted({0, len(have) // 2, len(have) - 1})]  # lowest, middle, highest dose
    fig, axes = plt.subplots(len(shown), len(cols), figsize=(2.4 * len(cols), 2.4 * len(shown)), squeeze=False)
    for i, dk in enumerate(shown):
        e = ex[dk]
        # One scale per row, the clean frame's: a method's over- or undershoot shows.
        vmax = float(np.sqrt(max(e["target"][0].max(), 1e-12)))
        for j, k in enumerate(cols):
            axes[i, j].imshow(np.sqrt(np.maximum(e[k][0], 0)), cmap="magma", vmin=0, vmax=vmax)
            _no_ticks(axes[i, j])
            if i == 0:
                axes[i, j].set_title(titles[k], fontsize=9)
        axes[i, 0].set_ylabel(f"dose {float(dk):.0e}", fontsize=9)
    return fig, "denoise_examples.png", "Denoising examples (sqrt intensity, same scale per row)"


def _centers_error(plt, res: dict):
    if "centers" not in res:
        return None
    rows = res["centers"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind in zip(axes, ("crystal", "amorphous")):
        for m in CENTER_METHODS:
            pts = [(r["dose"], r["by_kind"][kind]["er"]) for r in rows if r["method"] == m and kind in r["by_kind"]]
            if pts:
                ax.errorbar(
                    [p[0] for p in pts],
                    [p[1]["median"] for p in pts],
                    yerr=[[p[1]["median"] * 0 for p in pts], [p[1]["p95"] - p[1]["median"] for p in pts]],
                    marker="o",
                    capsize=3,
                    color=COLORS[m],
                    label=LABELS[m],
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("dose (electrons per pattern)")
        ax.set_title(kind)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("centre error R (px): median, bar to p95")
    axes[0].legend(fontsize=7)
    return fig, "centers_error.png", "Beam centres: distance to the true zero angle vs dose"


def _centers_cdf(plt, res: dict):
    errs = res.get("centers", {}).get("errors", {})
    if not errs:
        return None
    dk = _middle_dose(res)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for m, e in errs.get(dk, {}).items():
        e = np.asarray(e)
        e = np.sort(e[np.isfinite(e)])
        if e.size:
            ax.plot(np.maximum(e, 1e-4), np.arange(1, e.size + 1) / e.size, color=COLORS.get(m), label=LABELS[m])
    ax.set_xscale("log")
    ax.set_xlabel("centre error R (px)")
    ax.set_ylabel("fraction of patterns")
    ax.set_title(f"dose {float(dk):.0e}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return fig, "centers_cdf.png", f"Beam centres: cumulative distribution of the error at dose {float(dk):.0e}"


def _ellipse_radial(plt, res: dict):
    dk = _middle_dose(res)
    ex = res.get("ellipse", {}).get("profiles", {}).get(dk, {})
    if not ex:
        return None
    fig, axes = plt.subplots(len(ex), 3, figsize=(14, 3.6 * len(ex)), squeeze=False)
    for i, (kind, x) in enumerate(ex.items()):
        img = np.maximum(x["image"], 0)
        axes[i, 0].imshow(np.log10(img + 1e-4 * img.max() + 1e-30), cmap="magma")
        axes[i, 0].set_title(f"{kind} mean pattern (log), ratio {x['ratio']:.3f} at {math.degrees(x['angle']):.0f}°", fontsize=9)
        _no_ticks(axes[i, 0])
        peak = max(float(x["profiles"]["before"][0].max()), 1e-30)
        for name, (mean, std) in x["profiles"].items():
            lab = "before correction" if name == "before" else LABELS.get(name, name)
            ls = "--" if name == "true" else "-"
            axes[i, 1].plot(np.arange(mean.size), np.maximum(mean / peak, 1e-6), ls, color=COLORS.get(name), label=lab)
            axes[i, 2].plot(np.arange(std.size), std / peak, ls, color=COLORS.get(name), label=lab)
        axes[i, 1].set_yscale("log")
        axes[i, 1].set_ylabel("azimuthal mean / peak")
        axes[i, 2].set_yscale("log")
        axes[i, 2].set_ylabel("azimuthal std / peak")
        for ax in axes[i, 1:]:
            ax.set_xlabel("radius (px)")
            ax.grid(alpha=0.3, which="both")
        axes[i, 2].legend(fontsize=7)
    title = (
        "Ellipse: radial profile and azimuthal spread per radius before and after correction "
        f"(dose {float(dk):.0e}); a circular pattern has no spread"
    )
    return fig, "ellipse_radial.png", title


def _ellipse_error(plt, res: dict):
    if "ellipse" not in res:
        return None
    rows = res["ellipse"]["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for m in ELLIPSE_METHODS:
        pts = [(r["dose"], r["by_kind"]["all"]) for r in rows if r["method"] == m and "all" in r["by_kind"]]
        if not pts:
            continue
        for ax, stat in zip(axes, ("ratio_err", "angle_err_deg")):
            ax.errorbar(
                [p[0] for p in pts],
                [p[1][stat]["mean"] for p in pts],
                yerr=[p[1][stat]["std"] for p in pts],
                marker="o",
                capsize=3,
                color=COLORS[m],
                label=LABELS[m],
            )
    for ax, lab in zip(axes, ("ratio error", f"angle error (°), ratio ≥ {res['config']['angle_min_ratio']:g}")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("dose per frame (electrons)")
        ax.set_ylabel(lab)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    return fig, "ellipse_error.png", "Ellipse: ratio and angle errors vs dose (all kinds, mean ± std)"


def _e2e(plt, res: dict):
    ex = res.get("e2e", {}).get("examples")
    if not ex:
        return None
    # The "none" pipeline's output is the raw cube again: left out.
    keys = [k for k in ("raw", "classical", "classical_friedel", "network", "ideal") if k in ex]
    fig, axes = plt.subplots(2, len(keys), figsize=(2.6 * len(keys), 5.4), squeeze=False)
    vmax = float(np.sqrt(max(ex["ideal"]["mean"].max(), 1e-12)))
    for j, k in enumerate(keys):
        for i, what in enumerate(("mean", "frame")):
            axes[i, j].imshow(np.sqrt(np.maximum(ex[k][what], 0)), cmap="magma", vmin=0, vmax=vmax)
            _no_ticks(axes[i, j])
        axes[0, j].set_title({"raw": "raw", "ideal": "ideal"}.get(k, LABELS.get(k, k)), fontsize=8)
    axes[0, 0].set_ylabel("mean pattern")
    axes[1, 0].set_ylabel("frame (0, 0)")
    return fig, "e2e.png", "End to end: mean pattern and one frame, raw, processed and ideal (sqrt intensity)"


#: In the order the report shows them.
_FIGURES = (_denoise_psnr, _denoise_examples, _centers_error, _centers_cdf, _ellipse_radial, _ellipse_error, _e2e)


def write_figures(res: dict, out: Path) -> list[tuple[Path, str]]:
    """Draw every figure whose table ran into ``out`` (PNG); returns ``[(path, caption)]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for figure in _FIGURES:
        drawn = figure(plt, res)
        if drawn is None:
            continue
        fig, name, title = drawn
        path = Path(out) / name
        fig.savefig(path, dpi=90, bbox_inches="tight")
        plt.close(fig)
        made.append((path, title))
    return made
