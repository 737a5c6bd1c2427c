"""Ellipse estimates on abTEM mean patterns: refusals and errors (issue 27, item 1).

The cached abTEM run (``~/.cache/prenet-jax/risk_sim``: 20 tasks of 8 patterns, 16
crystal and 4 amorphous tasks) is read as an evaluation set; the evaluation harness's
:func:`prenet_jax.evaluation._corrupt.ellipse_samples` then draws ``--ellipses`` random
ellipses (ratio 1.00-1.12) per task mean, its zero angle on the frame centre, either as
the mean of rotated copies (``rotations`` 32: rings, a scan over many grains) or of one
orientation (``rotations`` 1: the spot pattern of one crystal). Every sample goes through
:meth:`prenet_jax.Pipeline.estimate_ellipse` (the classical fit, ``ellipse_method="fit"``)
noise-free and at a dose of 1e6 electrons in the mean.

Reported per set: refused count, ratio error (mean / median / p95) and the a-axis angle
error for ratios >= 1.03 (mean / median / p95, degrees).

Run: ``.venv/bin/python benchmarks/ellipse_refusals.py [--ellipses 16] [--root DIR]``
(about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np


def load_set(root: Path):
    from prenet_jax.evaluation import EvalSet
    from prenet_jax.internal import read_run

    clean, zero, rows = read_run(root)
    empty = np.zeros((1, 1) + clean.shape[-2:], np.float32)
    return EvalSet(
        single=clean,
        single_zero=zero,
        single_kind=np.asarray([r["kind"] for r in rows]),
        single_group=np.asarray([int(r["task"]) for r in rows]),
        single_id=np.asarray([r["structure_id"] for r in rows]),
        scans=empty,
        scans_zero=np.zeros((1, 2), np.float32),
        scans_kind=np.asarray(["crystal"]),
        scans_id=np.asarray(["none"]),
        source="abtem",
        info={"disk_radius_px": [float(r["disk_radius_px"]) for r in rows]},
    )


def angle_error_deg(a, b):
    d = np.mod(np.asarray(a) - np.asarray(b) + np.pi / 2, np.pi) - np.pi / 2
    return np.degrees(np.abs(d))


def measure(pipe, samples, noisy=None):
    """``(ratio, angle, refused (bool), message)`` per sample."""
    x = samples["expected"] if noisy is None else noisy
    out = []
    for m in x:
        try:
            e = pipe.estimate_ellipse(m)
            out.append((e.ratio, e.angle, False, ""))
        except ValueError as err:
            out.append((math.nan, math.nan, True, str(err)))
    return out


def summary(name: str, samples, res) -> str:
    ratio = samples["ratio"].astype(np.float64)
    angle = samples["angle"].astype(np.float64)
    kind = samples["kind"]
    r = np.array([v[0] for v in res])
    a = np.array([v[1] for v in res])
    refused = np.array([v[2] for v in res])
    lines = []
    for k in ("crystal", "amorphous"):
        sel = kind == k
        if not sel.any():
            continue
        ok = sel & ~refused
        er = np.abs(r[ok] - ratio[ok])
        big = ok & (ratio >= 1.03)
        ea = angle_error_deg(a[big], angle[big])
        lines.append(
            f"| {name} | {k} | {sel.sum()} | {int((sel & refused).sum())} | "
            f"{er.mean():.4f} / {np.median(er):.4f} / {np.percentile(er, 95):.4f} | "
            f"{ea.mean():.3f} / {np.median(ea):.3f} / {np.percentile(ea, 95):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path.home() / ".cache/prenet-jax/risk_sim")
    ap.add_argument("--ellipses", type=int, default=16, help="ellipses per task mean")
    ap.add_argument("--rotations", type=int, nargs="+", default=[32, 1])
    ap.add_argument("--dose", type=float, default=1e6, help="electrons in the mean (0: noise-free only)")
    ap.add_argument("--show-refused", action="store_true")
    args = ap.parse_args()

    import jax.numpy as jnp

    from prenet_jax import Pipeline, PipelineConfig
    from prenet_jax.evaluation import EvalConfig
    from prenet_jax.internal import ellipse_samples
    from prenet_jax.internal import eval_poisson as poisson

    es = load_set(args.root)
    pipe = Pipeline(PipelineConfig(denoise_method="none", center_method="com", ellipse_method="fit"))
    print("| set | kind | n | refused | ratio error mean / median / p95 | angle error (ratio >= 1.03) mean / median / p95 (deg) |")
    print("|---|---|---|---|---|---|")
    import jax

    for rot in args.rotations:
        cfg = EvalConfig(ratio_range=(1.0, 1.12), ellipses_per_group=args.ellipses, rotations=rot)
        s = ellipse_samples(es, cfg)
        t0 = time.perf_counter()
        res = measure(pipe, s)
        name = f"rotations {rot}, noise-free"
        print(summary(name, s, res), f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.show_refused:
            for i, v in enumerate(res):
                if v[2]:
                    print(f"  refused {i}: ratio {s['ratio'][i]:.4f} angle {math.degrees(s['angle'][i]):.1f} radius {s['radius'][i]:.1f}")
        if args.dose:
            exp = s["expected"] / s["expected"].sum(axis=(1, 2), keepdims=True) * args.dose
            noisy = np.asarray(poisson(jax.random.key(7), jnp.asarray(exp)))
            res = measure(pipe, s, noisy)
            print(summary(f"rotations {rot}, {args.dose:.0e} e", s, res), flush=True)


if __name__ == "__main__":
    main()
