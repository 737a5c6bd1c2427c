"""Which intensity transform should the denoiser learn in?  sqrt vs linear, measured.

1. Noise statistics, no training: synthetic patterns with Poisson noise at doses 1e2-1e6
   electrons per pattern, scaled by each frame's maximum (the pipeline's ``normalize``).
   For each transform: the noise standard deviation in the direct disk over that in the
   weak features (Bragg disks), and the share of the squared noise that sits in the
   direct disk (what a mean-squared loss spends its effort on).
2. Two denoisers, identical but for ``pipeline.transform`` (each trained in its own space),
   scored on the held-out structures at each dose through the pipeline's own
   ``denoise_stage``: PSNR in counts (peak = the noise-free maximum), PSNR in the sqrt
   space, and the relative error of the weak features; the noisy input and a Gaussian
   filter (sigma 1 px) as references.

    python train/experiments/transform_study.py --out runs/transform_study   # ~10 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prenet_jax.ops import gaussian_filter
from prenet_jax.pipeline import denoise_stage
from prenet_jax.training import (
    denoise_metrics,
    distort,
    load_config,
    load_run_variables,
    load_split,
    override,
    poisson,
    resolve_pipeline,
    train,
)

DOSES = (1e2, 1e3, 1e4, 1e5, 1e6)
HERE = Path(__file__).resolve().parent


@jax.jit
def _pairs(key, clean, zero, dose):
    """Shifted, rotated, distorted noise-free patterns (electrons) and their Poisson counts."""
    k1, k2, k3, k4, k5 = jax.random.split(key, 5)
    b = clean.shape[0]
    shift = jax.random.uniform(k1, (b, 2), minval=-3.0, maxval=3.0)
    ratio = jax.random.uniform(k2, (b,), minval=1.0, maxval=1.15)
    angle = jax.random.uniform(k3, (b,), maxval=jnp.pi)
    rot = jax.random.uniform(k4, (b,), maxval=2 * jnp.pi)
    d, _ = distort(clean, zero, shift, ratio, angle, rot)
    target = jnp.maximum(d, 0.0) * dose
    return poisson(k5, target), target


def noise_statistics(clean, zero, seed=0) -> list[dict]:
    rows = []
    for dose in DOSES:
        noisy, target = (np.asarray(a) for a in _pairs(jax.random.key(seed), jnp.asarray(clean), jnp.asarray(zero), dose))
        m_noisy = noisy.max(axis=(1, 2), keepdims=True)
        m = target.max(axis=(1, 2), keepdims=True)
        disk = target >= 0.5 * m
        weak = (target >= 0.005 * m) & (target <= 0.3 * m)
        row = {"dose": dose, "counts_at_peak": float(np.median(m))}
        for name, f in (("linear", lambda x: x), ("sqrt", np.sqrt)):
            err = f(noisy / m_noisy) - f(target / m_noisy)
            row[f"{name}_disk_over_weak_noise"] = float(err[disk].std() / err[weak].std())
            row[f"{name}_disk_share_of_sq_noise"] = float((err[disk] ** 2).sum() / (err**2).sum())
        rows.append(row)
    return rows


def score(pcfg, variables, clean, zero, seed=1) -> list[dict]:
    fn = jax.jit(lambda x: denoise_stage(pcfg, {"denoiser": variables}, x))
    rows = []
    for dose in DOSES:
        acc: dict = {}
        for i in range(0, clean.shape[0] - 15, 16):
            noisy, target = _pairs(
                jax.random.fold_in(jax.random.key(seed), i), jnp.asarray(clean[i : i + 16]), jnp.asarray(zero[i : i + 16]), dose
            )
            for name, out in (("network", fn(noisy)), ("noisy", noisy), ("gaussian", jax.vmap(lambda f: gaussian_filter(f, 1.0))(noisy))):
                m = denoise_metrics(out, noisy, target)
                for k in ("psnr", "psnr_sqrt", "weak_rel_err"):
                    acc.setdefault(f"{name}_{k}", []).append(float(m[k]))
        rows.append({"dose": dose, **{k: float(np.mean(v)) for k, v in acc.items()}})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/transform_study")
    p.add_argument("--steps", type=int, default=1500)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_config(f"{HERE.parent / 'configs' / 'denoiser.py'}:tiny")
    sets = {
        "steps": args.steps,
        "pipeline.denoiser.width": 8,
        "pipeline.denoiser.depth": 3,
        "augment.dose_range": (1e2, 1e6),
        "eval_every": 500,
        "patience": None,
        "log_every": 50,
        "warmup_steps": 100,
    }
    for k, v in sets.items():
        base = override(base, k, v)
    test = load_split(base.data, "test")
    result = {"noise": noise_statistics(test.clean, test.zero_angle), "config": base.to_dict(), "scores": {}}
    for transform in ("sqrt", "linear"):
        cfg = override(override(base, "pipeline.transform", transform), "name", f"denoiser_{transform}")
        train(cfg, out / cfg.name)
        _, variables, _ = load_run_variables(out / cfg.name)
        result["scores"][transform] = score(resolve_pipeline(cfg), variables["denoiser"], test.clean, test.zero_angle)
    (out / "transform_study.json").write_text(json.dumps(result, indent=2))
    print("| dose (e/pattern) | counts at peak | noise disk/weak, linear | sqrt | disk share of sq. noise, linear | sqrt |")
    print("|---|---|---|---|---|---|")
    for r in result["noise"]:
        print(
            f"| {r['dose']:.0e} | {r['counts_at_peak']:.0f} | {r['linear_disk_over_weak_noise']:.2f} | {r['sqrt_disk_over_weak_noise']:.2f} "
            f"| {r['linear_disk_share_of_sq_noise']:.2f} | {r['sqrt_disk_share_of_sq_noise']:.2f} |"
        )
    print()
    print(
        "| dose | PSNR noisy | Gaussian | linear-trained | sqrt-trained | sqrt-space PSNR: noisy | Gaussian | linear | sqrt "
        "| weak-feature rel. error: noisy | Gaussian | linear | sqrt |"
    )
    print("|---" * 13 + "|")
    s, lin = result["scores"]["sqrt"], result["scores"]["linear"]
    for a, b in zip(s, lin):
        print(
            f"| {a['dose']:.0e} | {a['noisy_psnr']:.1f} | {a['gaussian_psnr']:.1f} | {b['network_psnr']:.1f} | {a['network_psnr']:.1f} "
            f"| {a['noisy_psnr_sqrt']:.1f} | {a['gaussian_psnr_sqrt']:.1f} | {b['network_psnr_sqrt']:.1f} | {a['network_psnr_sqrt']:.1f} "
            f"| {a['noisy_weak_rel_err']:.3f} | {a['gaussian_weak_rel_err']:.3f} | {b['network_weak_rel_err']:.3f} | {a['network_weak_rel_err']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
