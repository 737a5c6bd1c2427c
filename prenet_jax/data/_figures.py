"""Figure: a grid of simulated crystal and amorphous patterns with their labels.

``prenet-jax simulate-figure --output docs/figures/simulated_patterns.png`` (its command
line is in :mod:`prenet_jax.cli._simulate`) simulates a small, fixed set of patterns (about a
minute on two CPU cores) and draws them; ``--data DIR`` draws from an existing
simulation instead. Each panel shows log10 of the intensity (fraction of the incident
electrons per pixel), the zero angle (the label, ``+``) and the direct disk's centre of
mass (``x``: not the label), with the structure, voltage, semi-angle, disk radius,
thickness and orientation. The last row shows the augmentation: the noisy input with its
true centre and the applied ellipse drawn on it.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .._util import atomic_path

__all__ = ["FIGURE_STRUCTURES", "figure_from_dataset", "make_figure"]

# A spread of real crystals (cubic, hexagonal, layered, oxide, low symmetry), one random
# pyxtal crystal, and amorphous metallic, oxide, covalent and molecular boxes.
FIGURE_STRUCTURES = (
    "ase:Si",
    "compound:SrTiO3-perovskite",
    "compound:GaN-wurtzite",
    "compound:MoS2-2H",
    "ase:Au",
    "compound:Al2O3-corundum",
    "compound:TiO2-rutile",
    "compound:ZrO2-baddeleyite",
    "crystals:vo2-m1",
    "pyxtal:00007",
    "compound:Fe3O4-spinel",
    "ase:Mg",
    "amorphous:Cu50Zr50:000",
    "amorphous:a-SiO2:000",
    "amorphous:a-C:000",
    "amorphous:vitreous-ice:000",
)


def _short(meta: dict) -> str:
    sid = meta["structure_id"]
    name = sid.split(":", 1)[-1]
    if sid.startswith("pyxtal"):
        name = f"{meta['formula']} (pyxtal, sg {meta['spacegroup']})"
    elif sid.startswith("amorphous"):
        name = "amorphous " + name.rsplit(":", 1)[0]
    return name


def _orientation(meta: dict) -> str:
    o = meta["orientation"]
    if o == "zone":
        return "[" + "".join(str(int(u)) for u in str(meta["zone_axis"]).split()) + "]"
    return {"isotropic": "", "random": "random or.", "average": "average"}.get(o, o)


def _panel(ax, img, meta: dict, floor: float = 1e-7):
    z = [float(v) for v in str(meta["zero_angle"]).split()]
    com = [float(v) for v in str(meta["disk_com"]).split()]
    ax.imshow(np.log10(np.maximum(img, floor)), cmap="inferno", vmin=math.log10(floor), interpolation="nearest")
    ax.plot(z[1], z[0], "+", color="cyan", ms=9, mew=1.2)
    if all(math.isfinite(v) for v in com):
        ax.plot(com[1], com[0], "x", color="lime", ms=6, mew=1.0)
    t = float(meta["thickness_a"]) / 10
    lines = [
        _short(meta),
        f"{float(meta['energy_ev']) / 1e3:.0f} kV  α={float(meta['semiangle_mrad']):.1f} mrad  r={float(meta['disk_radius_px']):.1f} px",
        f"t={t:.1f} nm  {_orientation(meta)}",
    ]
    ax.set_title("\n".join(lines), fontsize=7, loc="left")
    ax.set_xticks([])
    ax.set_yticks([])


def figure_from_dataset(
    root: str | os.PathLike, output: str | os.PathLike, max_panels: int = 16, augmented: int = 4, seed: int = 0
) -> Path:
    """Draw up to ``max_panels`` patterns (one per structure, amorphous last), any ellipse
    averages, and ``augmented`` augmented examples from the simulation in ``root``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse as EllipsePatch

    from ._sim_store import read_manifest, read_shard

    rows = read_manifest(root, "patterns")
    seen, picked = set(), []
    for r in sorted(rows, key=lambda r: (r["kind"] == "amorphous", int(r["task"]))):
        if r["structure_id"] not in seen:
            seen.add(r["structure_id"])
            picked.append(r)
    picked = picked[:max_panels]
    ell_rows = read_manifest(root, "ellipse")[:4]

    def load(r):
        return read_shard(Path(root) / r["shard"])["patterns"][int(r["index"])]

    panels = [(load(r), r) for r in picked] + [(load(r), r) for r in ell_rows]
    ncol = 4
    nrow = -(-len(panels) // ncol) + (1 if augmented else 0)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.1 * ncol, 3.5 * nrow), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, r) in zip(axes.ravel(), panels):
        ax.axis("on")
        _panel(ax, img, r)
    if augmented:
        import jax
        import jax.numpy as jnp

        from ..corruption import AugmentConfig, augment

        clean = np.stack([img for img, _ in panels[:augmented]])
        zero = np.asarray([[float(v) for v in r["zero_angle"].split()] for _, r in panels[:augmented]], np.float32)
        cfg = AugmentConfig(dose_range=(1e4, 1e5))
        out = augment(jax.random.key(seed), jnp.asarray(clean), jnp.asarray(zero), cfg)
        for i in range(len(clean)):
            ax = axes[-1, i]
            ax.axis("on")
            noisy = np.asarray(out.noisy[i])
            ax.imshow(np.sqrt(np.maximum(noisy, 0)), cmap="gray", interpolation="nearest")
            cr, cc = (float(v) for v in out.center[i])
            ratio, angle = float(out.ellipse[0][i]), float(out.ellipse[1][i])
            rad = 40.0
            # The a-axis angle is measured from +x towards +y (row); with the image's y
            # axis pointing down, matplotlib's angle (counter-clockwise on screen) is -theta.
            ax.add_patch(
                EllipsePatch(
                    (cc, cr),
                    2 * rad * math.sqrt(ratio),
                    2 * rad / math.sqrt(ratio),
                    angle=-math.degrees(angle),
                    fill=False,
                    color="cyan",
                    lw=0.8,
                )
            )
            ax.plot(cc, cr, "+", color="cyan", ms=9, mew=1.2)
            ax.set_title(
                f"augmented: centre ({cr:.2f}, {cc:.2f})\nratio {ratio:.3f}, θ={math.degrees(angle):.0f}°, {float(noisy.sum()):.0f} counts",
                fontsize=7,
                loc="left",
            )
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("abTEM patterns, log10(fraction of electrons per pixel); + zero angle (label), x disk centre of mass", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    output = Path(output)
    with atomic_path(output) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return output


def make_figure(
    output: str | os.PathLike, data: str | os.PathLike | None = None, seed: int = 0, device: str = "cpu", progress: bool = True
) -> Path:
    """Simulate :data:`FIGURE_STRUCTURES` (one pattern each, two ellipse averages) into
    ``data`` (a temporary directory when None) and draw them."""
    from ._sim_config import SimulationConfig
    from ._simulate import run_simulation

    cfg = SimulationConfig(
        structure_ids=FIGURE_STRUCTURES,
        n_patterns=len(FIGURE_STRUCTURES),
        seed=seed,
        thicknesses_per_task=1,
        positions_per_task=1,
        thickness_a=(50.0, 300.0),
        tasks_per_shard=4,
        ellipse_samples=2,
        ellipse_orientations=8,
        ellipse_rotations=16,
        ellipse_thickness_a=(50.0, 100.0),
    )
    if data is None:
        with tempfile.TemporaryDirectory() as tmp:
            run_simulation(cfg, tmp, device=device, progress=progress)
            return figure_from_dataset(tmp, output, seed=seed)
    run_simulation(cfg, data, device=device, progress=progress)
    return figure_from_dataset(data, output, seed=seed)
