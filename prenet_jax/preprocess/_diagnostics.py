"""Diagnostic figures of a preprocessing run: what changed, in the paper's measures.

Four PNGs next to the output (``<stem>_mean.png``, ``<stem>_centers.png``,
``<stem>_polar.png``, ``<stem>_radial.png``):

- the mean pattern before and after;
- the beam-centre maps (row, col) before (as found in the input frames) and after
  (centre of mass of the corrected frames), relative to the frame centre;
- the polar transform of the mean pattern before (about the mean measured centre)
  and after (about the frame centre): a recentred, circular pattern has straight
  rings;
- the radial profile (azimuthal mean) and the radial standard deviation
  (azimuthal standard deviation at each radius) of the mean pattern, before and
  after (4D-PreNet, Figures 4 and 5): misalignment and ellipticity raise the
  standard deviation at the disk and ring edges.

The polar and radial figures carry a ``note`` under their title: the residual
ellipse fitted to the corrected mean and, for a run that refined it, the ellipse
before and after its refinement.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._util import atomic_path

__all__ = ["diagnostic_paths", "radial_measures", "write_diagnostics"]

_NAMES = ("mean", "centers", "polar", "radial")


def diagnostic_paths(output: str | os.PathLike) -> list[Path]:
    """The PNG files written for ``output``: ``<stem>_<kind>.png`` in its folder."""
    output = Path(output)
    return [output.with_name(f"{output.stem}_{n}.png") for n in _NAMES]


def radial_measures(mean: np.ndarray, center: tuple[float, float], n_angles: int = 360) -> dict[str, np.ndarray]:
    """Polar transform of ``mean`` (H, W) about ``center`` ``(row, col)``.

    Returns
    -------
    dict with ``polar`` (n_angles, n_radii), ``radius`` (n_radii,) px, ``profile``
    (azimuthal mean), ``std`` (azimuthal standard deviation) and ``anisotropy``
    (sum of ``std`` over sum of ``profile``: 0 for a perfectly round, centred pattern).
    """
    import jax
    import jax.numpy as jnp

    from ..ops import polar_transform

    h, w = mean.shape
    cr, cc = float(center[0]), float(center[1])
    # the largest circle about the centre that stays inside the frame
    r_max = max(2.0, min(cr, cc, h - 1 - cr, w - 1 - cc) - 1.0)
    n_radii = 2 * int(round(r_max)) + 1  # half-pixel radial steps
    fn = jax.jit(polar_transform, static_argnums=(2, 3, 4, 5))  # one compile, not one per op
    polar = np.asarray(
        fn(jnp.asarray(mean, jnp.float32), jnp.asarray([cr, cc], jnp.float32), n_angles, n_radii, float(r_max), "cubic"), np.float64
    )
    profile = polar.mean(axis=0)
    std = polar.std(axis=0)
    aniso = float(std.sum() / max(abs(profile).sum(), 1e-30))
    return {"polar": polar, "radius": np.linspace(0.0, r_max, n_radii), "profile": profile, "std": std, "anisotropy": aniso}


def _save(fig, path: Path) -> None:
    # written under a temporary name first: a figure appears whole or not at all
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def write_diagnostics(
    output: str | os.PathLike,
    mean_before: np.ndarray,
    mean_after: np.ndarray,
    centers: np.ndarray,
    centers_after: np.ndarray,
    good: np.ndarray,
    title: str = "",
    between=None,
    note: str = "",
    after_label: str = "after: centre of mass of the output",
    descan=None,
    mask=None,
) -> tuple[list[Path], dict]:
    """Write the four PNGs for ``output``: all four, or none (a failure removes those
    already written).

    Parameters
    ----------
    output : the preprocessed file; figures go next to it
    mean_before, mean_after : (H, W) mean input and corrected patterns
    centers : (Rx, Ry, 2) beam centres ``(row, col)`` found in the input frames
    centers_after : (Rx, Ry, 2) centres of the corrected frames (NaN: not measured)
    good : (Rx, Ry) bool, frames that entered the means (others are greyed out)
    title : first line of every figure (e.g. the input file)
    between : called before each figure; it may raise to stop (an interrupt)
    note : text shown on the polar and radial figures (e.g. the residual ellipse ratio)
    after_label : the title of the ``centers_after`` maps (which estimator measured them)
    descan : a :class:`prenet_jax.ops.Descan` fit of ``centers``: the centre figure
        then also maps its model and the residuals (outliers marked)
    mask : (H, W) bool detector mask (True = bad) of the input frames: drawn on the
        mean pattern before

    Returns
    -------
    (paths, measures) with ``measures["before"]`` and ``measures["after"]`` from
    :func:`radial_measures`.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    paths = diagnostic_paths(output)
    written: list[Path] = []
    try:
        measures = _write_figures(
            plt,
            paths,
            written,
            mean_before,
            mean_after,
            centers,
            centers_after,
            good,
            title,
            between or (lambda: None),
            note,
            after_label,
            descan,
            mask,
        )
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return paths, measures


def _write_figures(
    plt, paths, written, mean_before, mean_after, centers, centers_after, good, title, between, note, after_label, descan, mask
) -> dict:
    def save(fig, path):
        _save(fig, path)
        written.append(path)
        plt.close(fig)

    h, w = mean_after.shape  # the output's frame (larger than the input's when padded)
    c0 = ((h - 1) / 2.0, (w - 1) / 2.0)
    sel = good & np.isfinite(centers).all(-1)
    c_in = tuple(np.nanmean(centers[sel], axis=0)) if sel.any() else c0
    before = radial_measures(mean_before, c_in)
    after = radial_measures(mean_after, c0)

    def show(ax, img, name):
        im = ax.imshow(np.sqrt(np.maximum(img, 0)), cmap="magma", interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("col (px)")
        ax.set_ylabel("row (px)")
        return im

    suptitle = (title + "\n") if title else ""
    # 1. mean pattern
    between()
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.8))
    show(ax[0], mean_before, "mean pattern before (sqrt scale)")
    ax[0].plot([c_in[1]], [c_in[0]], "c+", ms=12, mew=1.5, label="mean measured centre")
    if mask is not None and mask.any():
        overlay = np.zeros(mask.shape + (4,))
        overlay[mask] = (0.0, 0.9, 0.3, 0.85)  # green: not a colour of the magma map
        ax[0].imshow(overlay, interpolation="nearest")
        ax[0].plot([], [], "s", color=(0.0, 0.9, 0.3), label=f"masked ({int(mask.sum())} px)")
    show(ax[1], mean_after, "mean pattern after (sqrt scale)")
    ax[1].plot([c0[1]], [c0[0]], "c+", ms=12, mew=1.5, label="frame centre ((H-1)/2, (W-1)/2)")
    for a in ax:
        a.legend(loc="lower right", fontsize=8)
    fig.suptitle(suptitle + "mean diffraction pattern", fontsize=11)
    fig.tight_layout()
    save(fig, paths[0])

    # 2. centre maps, relative to the frame centre (with a descan fit: its model and residuals too)
    between()
    hi, wi = mean_before.shape
    c_frame = ((hi - 1) / 2.0, (wi - 1) / 2.0)  # the input's frame centre
    maps = [(centers, "before: found in the input", c_frame)]
    if descan is not None:
        name = "plane" if descan.degree == 1 else "quadratic"
        maps += [
            (descan.model, f"descan model ({name}, --descan {descan.mode})", c_frame),
            (descan.residuals, "found - model (x: outliers)", (0.0, 0.0)),
        ]
    maps.append((centers_after, after_label, c0))
    noise = None if descan is None else np.broadcast_to(np.asarray(descan.noise, np.float64), descan.model.shape)
    if noise is not None and np.ptp(noise[descan.valid], axis=0).max() > 0:  # per frame (thinning), not one value
        maps.append((noise, "centre uncertainty (1 sigma, Poisson thinning)", None))
    fig, ax = plt.subplots(2, len(maps), figsize=(5 * len(maps), 8.4), squeeze=False)
    for col, (cen, label, ref) in enumerate(maps):
        for row, (k, axis) in enumerate(((0, "row"), (1, "col"))):
            a = ax[row, col]
            if ref is None:  # a map of magnitudes, not of signed offsets
                d = np.where(good, cen[..., k], np.nan)
                im = a.imshow(d, cmap=plt.get_cmap("viridis").with_extremes(bad="0.6"), vmin=0.0, interpolation="nearest")
                a.set_title(f"{label}\n{axis} px (median {float(np.nanmedian(d)):.3g} px)", fontsize=9)
                a.set_xlabel("scan Ry")
                a.set_ylabel("scan Rx")
                fig.colorbar(im, ax=a, label="px")
                continue
            d = np.where(good, cen[..., k] - ref[k], np.nan)
            lim = float(np.nanmax(np.abs(d))) if np.isfinite(d).any() else 1.0
            lim = max(lim, 1e-3)
            cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.6")
            im = a.imshow(d, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
            sd = float(np.nanstd(d)) if np.isfinite(d).any() else float("nan")
            a.set_title(f"{label}\n{axis}{f' - {ref[k]:g}' if ref[k] else ''} px (std {sd:.3g} px)", fontsize=9)
            a.set_xlabel("scan Ry")
            a.set_ylabel("scan Rx")
            if descan is not None and cen is descan.residuals and descan.outliers.any():
                i, j = np.nonzero(descan.outliers)
                a.plot(j, i, "kx", ms=6, mew=1.2)
            fig.colorbar(im, ax=a, label="px")
    fig.suptitle(
        suptitle + "beam centre relative to the frame centre (grey: frames left out of the means: NaN/Inf pixels or no counts)", fontsize=11
    )
    fig.tight_layout()
    save(fig, paths[1])

    # 3. polar transforms
    between()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
    for a, m, name in (
        (ax[0], before, f"before, about ({c_in[0]:.2f}, {c_in[1]:.2f})"),
        (ax[1], after, f"after, about ({c0[0]:g}, {c0[1]:g})"),
    ):
        a.imshow(
            np.sqrt(np.maximum(m["polar"], 0)), aspect="auto", cmap="magma", extent=(0, m["radius"][-1], 360, 0), interpolation="nearest"
        )
        a.set_title(f"polar transform of the mean, {name}", fontsize=9)
        a.set_xlabel("radius (px)")
        a.set_ylabel("azimuth (deg from +col toward +row)")
    fig.suptitle(suptitle + "straight edges = centred and circular", fontsize=11)
    _annotate(fig, note)
    save(fig, paths[2])

    # 4. radial profile and radial standard deviation
    between()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4))
    for m, name, style in ((before, "before", "C0-"), (after, "after", "C3-")):
        ax[0].semilogy(m["radius"], np.maximum(m["profile"], 1e-12), style, label=name)
        ax[1].plot(m["radius"], m["std"], style, label=f"{name} (anisotropy {m['anisotropy']:.3g})")
    ax[0].set_title("radial profile (azimuthal mean)", fontsize=10)
    ax[1].set_title("radial standard deviation (over azimuth)", fontsize=10)
    for a in ax:
        a.set_xlabel("radius (px)")
        a.legend(fontsize=8)
    ax[0].set_ylabel("intensity (input units)")
    ax[1].set_ylabel("std (input units)")
    fig.suptitle(suptitle + "radial measures of the mean pattern (4D-PreNet Fig. 4/5)", fontsize=11)
    _annotate(fig, note)
    save(fig, paths[3])
    return {"before": before, "after": after}


def _annotate(fig, note: str) -> None:
    """``tight_layout``, with ``note`` (one or more lines) in a band at the bottom."""
    if not note:
        fig.tight_layout()
        return
    lines = note.count("\n") + 1
    band = min(0.06 * lines + 0.02, 0.3)
    fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8.5, color="0.2")
    fig.tight_layout(rect=(0, band, 1, 1))
