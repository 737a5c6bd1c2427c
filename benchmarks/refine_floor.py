"""Where the self-calibration's objectives have their minimum: started at the truth.

A refinement can only take an estimate as far as its objective's minimum. This script
starts :func:`prenet_jax.ops.refine_center` and :func:`prenet_jax.ops.refine_ellipse`
AT the known truth and reports how far they move (``benchmarks/EVAL.md``, section 5):

- centres: the held-out patterns of the centre table (shifted, rotated, distorted) at a
  high dose, refined from their labels;
- ellipse: the noise-free recentred mean patterns of the ellipse table, refined from
  their true ellipses; and an analytic disk and ring drawn directly at a known ellipse,
  and the same pattern resampled once by the evaluation's cubic ``distort``.

Usage::

    python benchmarks/refine_floor.py --data EVAL_SET_DIR [--patterns 32]
"""

from __future__ import annotations

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

import prenet_jax as pj
from prenet_jax.corruption import distort
from prenet_jax.evaluation import EvalConfig, load_abtem
from prenet_jax.internal import corrupt_single, ellipse_samples
from prenet_jax.internal import refine_ellipse_jit as _refine_ellipse_jit
from prenet_jax.ops import ellipse_of_params, ellipse_params, frame_center, refine_center


def _angle_deg(a, b) -> np.ndarray:
    return np.degrees(np.abs(np.mod(np.asarray(a) - np.asarray(b) + np.pi / 2, np.pi) - np.pi / 2))


def _refine_from(images: np.ndarray, ratio: np.ndarray, angle: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """``(N, 2)`` (ratio, angle) after refine_ellipse's L-BFGS started at ``(ratio, angle)``
    (no acceptance test: where the objective's minimum is)."""
    c0 = jnp.asarray(frame_center(images.shape[-2:]), jnp.float32)
    fn = jax.jit(jax.vmap(lambda im, p: _refine_ellipse_jit(im, p, c0, 30, False, band, 128, 96, "cubic")[0]))
    starts = jnp.stack([ellipse_params(pj.Ellipse(float(r), float(a))) for r, a in zip(ratio, angle)])
    x = np.concatenate([np.asarray(fn(jnp.asarray(images[i : i + 16]), starts[i : i + 16])) for i in range(0, len(images), 16)])
    return np.array([[float(v) for v in ellipse_of_params(jnp.asarray(p))] for p in x])


def _report(name: str, found: np.ndarray, ratio: np.ndarray, angle: np.ndarray) -> None:
    d = found[:, 0] - ratio
    print(
        f"{name}: ratio moved {np.median(np.abs(d)):.5f} (median |d|; signed median {np.median(d):+.5f}), "
        f"angle {np.median(_angle_deg(found[:, 1], angle)):.3f} deg (median), N={len(ratio)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="held-out set written by prenet-jax evaluate --generate")
    ap.add_argument("--patterns", type=int, default=32, help="mean patterns for the ellipse part")
    ap.add_argument("--dose", type=float, default=1e6, help="electrons per pattern of the centre part")
    args = ap.parse_args()
    es = load_abtem(args.data)
    cfg = EvalConfig()

    # Centres: from the label, at a high dose.
    data = corrupt_single(es, args.dose, cfg)
    fn = jax.jit(jax.vmap(lambda f, c: refine_center(f, c)[0]))
    found = np.concatenate(
        [
            np.asarray(fn(jnp.asarray(data["noisy"][i : i + 32]), jnp.asarray(data["center"][i : i + 32], jnp.float32)))
            for i in range(0, len(data["noisy"]), 32)
        ]
    )
    moved = np.linalg.norm(found - data["center"], axis=1)
    kind = np.asarray(es.single_kind)
    for k in ("crystal", "amorphous"):
        m = kind == k
        print(
            f"centres from the label ({k}, {args.dose:g} e-): moved median {np.median(moved[m]):.3f} px, p95 {np.percentile(moved[m], 95):.2f} px, N={m.sum()}"
        )

    # Ellipse: noise-free recentred mean patterns of the ellipse table, from the truth.
    smp = ellipse_samples(es, cfg)
    n = min(args.patterns, len(smp["ratio"]))
    imgs, ratio, angle = smp["expected"][:n], smp["ratio"][:n], smp["angle"][:n]
    half = imgs.shape[-1] / 2.0
    for band in ((3.0, half - 3.0), (3.0, 64.0)):
        _report(
            f"ellipse from the truth, abTEM mean patterns, band {band[0]:g}-{band[1]:g} px",
            _refine_from(imgs, ratio, angle, band),
            ratio,
            angle,
        )

    # Ellipse: an analytic disk (radius 10 px, erf edge 0.7 px) and ring (40 px), drawn
    # at the ellipse, and the round pattern resampled once by distort (cubic).
    rng = np.random.default_rng(1)
    m = 16
    ratio, angle = rng.uniform(1.03, 1.2, m), rng.uniform(0, math.pi, m)
    size = 256
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2.0

    def pattern(r):
        return 0.5 * (1 - np.vectorize(math.erf)((r - 10.0) / 0.7)) + 0.1 * np.exp(-(((r - 40.0) / 3.0) ** 2))

    drawn = []
    for r_, a_ in zip(ratio, angle):
        p = np.einsum("ij,jhw->ihw", np.linalg.inv(pj.Ellipse(float(r_), float(a_)).matrix()), np.stack([yy - c, xx - c]))
        drawn.append(pattern(np.hypot(p[0], p[1])))
    drawn = np.asarray(drawn, np.float32)
    _report("ellipse from the truth, analytic pattern drawn at the ellipse", _refine_from(drawn, ratio, angle, (3.0, 64.0)), ratio, angle)
    round_ = np.broadcast_to(pattern(np.hypot(yy - c, xx - c)).astype(np.float32), (m, size, size))
    warped, _ = distort(
        jnp.asarray(round_),
        jnp.asarray([c, c]),
        jnp.zeros((m, 2)),
        jnp.asarray(ratio, jnp.float32),
        jnp.asarray(angle, jnp.float32),
        jnp.zeros(m),
        "cubic",
    )
    warped = np.asarray(jnp.maximum(warped, 0.0))
    _report(
        "ellipse from the truth, the same pattern resampled once (cubic)", _refine_from(warped, ratio, angle, (3.0, 64.0)), ratio, angle
    )


if __name__ == "__main__":
    main()
