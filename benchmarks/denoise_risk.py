"""The classical Gaussian denoiser on abTEM frames: risk-chosen sigma vs the old rule,
and how close :func:`prenet_jax.pipeline.denoise_risk` comes to the true MSE.

Simulates (once; cached in ``~/.cache/prenet-jax/risk_frames.npz``) 160 clean 256x256
diffraction patterns with abTEM (Si, Cu, Au and an amorphous SiO2 box; gpts 384,
random orientations, two thicknesses and four probe positions per task), scales each
to 1e2 ... 1e6 electrons, adds Poisson noise (and, second, Poisson plus 0.5-count
Gaussian read noise, clipped at 0 as ``Pipeline`` does by default), and prints a
markdown section: mean PSNR (dB, peak = the clean frame's maximum) of the noisy
input, the old rule, the risk-chosen sigma, the best fixed sigma in hindsight and the
per-frame oracle (both over :data:`SIGMA_GRID`), and the relative error of
``denoise_risk`` against the true MSE.

    python benchmarks/denoise_risk.py            # about 5 minutes of 2 CPU cores
    python benchmarks/denoise_risk.py --frames 40
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndi

import prenet_jax as pj
from prenet_jax.evaluation import psnr
from prenet_jax.internal import grid_filters as _grid_filters
from prenet_jax.pipeline import SIGMA_GRID, denoise_risk, dose_adaptive_gaussian, gaussian_centre_weight, rule_gaussian

CACHE = Path.home() / ".cache" / "prenet-jax" / "risk_frames.npz"
DOSES = (1e2, 1e3, 1e4, 1e5, 1e6)
READ_NOISE = 0.5
CHUNK = 32


def frames() -> tuple[np.ndarray, np.ndarray]:
    """(N, 256, 256) clean patterns, each summing to 1, and their structure ids."""
    if not CACHE.exists():
        from prenet_jax.data import read_shard

        with tempfile.TemporaryDirectory() as tmp:
            exe = Path(sys.executable).with_name("prenet-jax")
            cmd = [str(exe), "simulate", "-o", tmp, "--structure-ids", "ase:Si", "ase:Cu", "ase:Au", "amorphous:a-SiO2:000"]
            cmd += ["--patterns", "160", "--gpts", "384", "--pattern-size", "256", "--thicknesses-per-task", "2"]
            cmd += ["--positions-per-task", "4", "--frozen-phonons", "0", "--workers", "1", "--threads", "1"]
            cmd += ["--no-progress", "--seed", "7", "--mantissa-bits", "23"]
            subprocess.run(cmd, check=True)
            shards = sorted(Path(tmp, "patterns").glob("*.h5"))
            data = [read_shard(s) for s in shards]
            p = np.concatenate([d["patterns"] for d in data]).astype(np.float64)
            ids = np.concatenate([np.asarray(d["meta"]["structure_id"], str) for d in data])
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(CACHE, patterns=(p / p.sum(axis=(1, 2), keepdims=True)).astype(np.float32), ids=ids)
    z = np.load(CACHE)
    return z["patterns"].astype(np.float64), z["ids"]


_grid = jax.jit(lambda x: jnp.stack([y for _, y, _ in _grid_filters(x, SIGMA_GRID)], axis=1))
_risk = jax.jit(dose_adaptive_gaussian)
_rule = jax.jit(rule_gaussian)


def chunked(fn, x):
    return np.concatenate([np.asarray(fn(jnp.asarray(x[i : i + CHUNK], jnp.float32))) for i in range(0, len(x), CHUNK)])


def gaussian(sigma):
    return lambda a: chunked(lambda b: pj.ops.gaussian_filter(b, sigma), a)


def median3(a):
    return ndi.median_filter(np.asarray(a), size=(1, 3, 3), mode="nearest")


def psnr_table(clean: np.ndarray, rng, read_noise: float) -> list[str]:
    rows = []
    for d in DOSES:
        c = clean * d
        y = rng.poisson(c).astype(np.float64)
        if read_noise:
            y = np.maximum(y + rng.normal(0.0, read_noise, y.shape), 0.0)  # the pipeline clips at 0
        y = y.astype(np.float32)
        grid = chunked(_grid, y)  # (N, S, H, W)
        p_grid = np.stack([psnr(grid[:, k], c) for k in range(len(SIGMA_GRID))], 1)
        mse_grid = np.mean((grid - c[:, None]) ** 2, axis=(2, 3))
        del grid
        out = chunked(_risk, y)
        mse_risk = np.mean((out - c) ** 2, axis=(1, 2))
        p_risk = psnr(out, c).mean()
        p_rule = psnr(chunked(_rule, y), c).mean()
        k_fixed = int(np.argmax(p_grid.mean(0)))
        oracle = mse_grid.min(1)
        rows.append(
            f"| {d:.0e} | {psnr(y, c).mean():.2f} | {p_rule:.2f} | **{p_risk:.2f}** | {p_grid[:, k_fixed].mean():.2f} "
            f"(σ {SIGMA_GRID[k_fixed]}) | {p_grid.max(1).mean():.2f} | {mse_risk.mean() / oracle.mean():.3f} "
            f"| {np.mean(mse_risk / oracle):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def risk_errors(clean: np.ndarray, rng) -> list[str]:
    rows = []
    shape = clean.shape[-2:]
    for noise, rn in (("Poisson", 0.0), (f"Poisson + {READ_NOISE} read noise (not clipped; measured g, σ_r)", READ_NOISE)):
        for d in (1e3, 1e4):
            c = clean * d
            y = rng.poisson(c).astype(np.float64)
            if rn:
                y = y + rng.normal(0.0, rn, y.shape)
            y = y.astype(np.float32)
            cases = [(f"Gaussian σ {s}", gaussian(s), s) for s in (0.5, 1.0, 2.0, 4.0)]
            cases += [("median 3x3", median3, None), ("old rule", lambda a: chunked(_rule, a), None)]
            for name, fn, s in cases:
                true = float(np.mean((np.asarray(fn(y), np.float64) - c) ** 2))
                cells = []
                if s is not None:
                    e = denoise_risk(y, fn, centre_weight=gaussian_centre_weight(shape, s))
                    cells.append(f"{100 * (e.mse / true - 1):+.1f} %")
                else:
                    cells.append("")
                t0 = time.perf_counter()
                e = denoise_risk(y, fn)
                dt = time.perf_counter() - t0
                cells.append(f"{100 * (e.mse / true - 1):+.1f} % (± {100 * e.stderr / true:.1f})")
                rows.append(
                    f"| {noise} | {d:.0e} | {name} | {true:.4g} | {cells[0]} | {cells[1]} | {e.gain:.3f}, {e.read_noise:.3f} | {dt:.0f} s |"
                )
                print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    clean, ids = frames()
    clean, ids = clean[: args.frames], ids[: args.frames]
    rng = np.random.default_rng(args.seed)
    kinds = ", ".join(f"{k} {int(n)}" for k, n in zip(*np.unique(ids, return_counts=True), strict=True))
    head = [
        f"## Gaussian denoiser: risk-chosen sigma vs the old rule, abTEM frames ({datetime.date.today()})",
        "",
        f"2-core CPU, jax {jax.__version__}; {len(clean)} abTEM 256² patterns ({kinds}), gpts 384; "
        "`python benchmarks/denoise_risk.py`. PSNR: mean over frames (dB, peak = the clean frame's max). "
        f"Fixed and oracle σ from the grid {SIGMA_GRID}. MSE ratio: risk-chosen over per-frame oracle "
        "(of the mean MSE; mean of per-frame ratios).",
        "",
    ]
    table = ["| electrons/frame | noisy | old rule | risk-chosen σ | best fixed σ | oracle σ per frame | MSE / oracle | per-frame |"]
    table.append("|---|---|---|---|---|---|---|---|")
    lines = head + ["Poisson:", ""] + table + psnr_table(clean, rng, 0.0)
    lines += ["", f"Poisson + {READ_NOISE}-count Gaussian read noise, clipped at 0:", ""] + table + psnr_table(clean, rng, READ_NOISE)
    lines += ["", "`denoise_risk` against the true MSE (mean over the frames; ± its stderr):", ""]
    lines += [
        "| noise | electrons/frame | denoiser | true MSE | exact linear | Monte Carlo (16 probes) | gain, read noise used | MC time |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"] + risk_errors(clean, rng)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
