"""Frames/s of the fused preprocessing step (one jit program per batch).

Times ``Pipeline.step`` on device-resident random uint16 batches after a warm-up
that holds the compile; reports the median over repeats. Also times each stage
alone (the networks and the geometry) so the cost of fusing can be read off.

    python benchmarks/step_throughput.py --config release --batch 128 --record
    python benchmarks/step_throughput.py --config bundled --batch 8     # the shipped weights' pipeline
    python benchmarks/step_throughput.py --config tiny --size 64      # CPU smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from _common import append_result, environment

import prenet_jax as pj


def _config(name: str, dtype: str, batch: int) -> pj.PipelineConfig:
    if name == "release":
        return pj.PipelineConfig.release(compute_dtype=dtype, batch_size=batch)
    if name == "default":
        return pj.PipelineConfig(compute_dtype=dtype, batch_size=batch)
    if name == "tiny":
        return pj.PipelineConfig.tiny(compute_dtype=dtype, batch_size=batch)
    if name == "classical":
        return pj.PipelineConfig.classical(batch_size=batch)
    raise SystemExit(f"unknown config {name!r}")


def _time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # warm-up holds the compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--config",
        default="release",
        choices=["release", "default", "tiny", "classical", "bundled"],
        help="an architecture with random weights, or the bundled trained weights' pipeline (what preprocess runs by default)",
    )
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--size", type=int, default=256, help="frame side in px")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bfloat16 on GPU, float32 on CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--refine", action="store_true", help="also time the fused step with center_refine='friedel' (its cost)")
    ap.add_argument("--mask", action="store_true", help="also time the fused step with a detector mask (a beam stop's rod; its cost)")
    ap.add_argument("--record", action="store_true", help="append to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    dtype = args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    if args.config == "bundled":
        shipped = pj.Pipeline.from_pretrained()
        cfg = shipped.config.replace(compute_dtype=dtype, batch_size=args.batch)
        pipe = pj.Pipeline(cfg, shipped.params)
    else:
        cfg = _config(args.config, dtype, args.batch)
        pipe = pj.Pipeline.init(jax.random.key(0), cfg)
    b, s = pipe.batch_size, args.size
    rng = np.random.default_rng(0)
    host = rng.integers(0, 4000, size=(b, s, s), dtype=np.uint16)
    batch = jax.device_put(host, pipe.data_sharding)
    matrix = jax.device_put(jnp.asarray(pj.Ellipse(1.05, 0.3).matrix(), jnp.float32), pipe.replicated)

    rows = []
    fused = _time(lambda: pipe.step_fn(pipe.params, batch, matrix), args.repeats)
    rows.append(("fused step", fused))
    refined = masked = None
    if args.refine:
        rpipe = pipe.with_refinement()
        refined = _time(lambda: rpipe.step_fn(rpipe.params, batch, matrix), args.repeats)
    if args.mask:
        rod = np.zeros((s, s), bool)
        rod[s // 2 - 3 : s // 2 + 3, : s // 2 - 8] = True  # a beam stop's rod from the edge to near the centre
        mpipe = pipe.with_mask(rod)
        masked = _time(lambda: mpipe.step_fn(mpipe.params, batch, matrix), args.repeats)
    # Stages alone, on the same batch (each its own jit program).
    from prenet_jax.pipeline import center_stage, denoise_stage, warp_stage

    x = jax.jit(lambda f: f.astype(jnp.float32))(batch)
    stages = {
        "denoise": jax.jit(lambda p, x: denoise_stage(cfg, p, x)),
        "centre": jax.jit(lambda p, x: center_stage(cfg, p, x)),
        "warp": jax.jit(lambda x, c, m: warp_stage(cfg, x, c, m)),
    }
    centers = jnp.full((b, 2), (s - 1) / 2 + 0.3, jnp.float32)
    for name, fn in stages.items():
        t = _time(lambda: fn(x, centers, matrix) if name == "warp" else fn(pipe.params, x), args.repeats)
        rows.append((name, t))
    total = sum(t for n, t in rows[1:])
    table = [
        f"config `{args.config}` ({cfg.denoise_method}/{cfg.center_method}"
        f"{'' if cfg.center_consensus == 'none' else ' + ' + cfg.center_consensus + ' consensus'} denoise/centre, compute {dtype}), "
        f"batch {b}, {s}x{s} uint16 frames, median of {args.repeats}",
        "",
        "| what | ms / batch | frames/s |",
        "|---|---|---|",
    ]
    table += [f"| {n} | {t * 1e3:.2f} | {b / t:,.0f} |" for n, t in rows]
    table.append(f"| sum of stages | {total * 1e3:.2f} | {b / total:,.0f} |")
    table.append("")
    table.append(f"fused / sum of stages: {fused / total:.2f}")
    if refined is not None:
        table.append(
            f"fused step with center_refine='friedel' (window {cfg.refine_window} px, {cfg.refine_steps} steps): "
            f"{refined * 1e3:.2f} ms / batch, {b / refined:,.0f} frames/s: +{100 * (refined / fused - 1):.0f} % over the fused step"
        )
    if masked is not None:
        table.append(
            f"fused step with a detector mask (a rod of {int(rod.sum())} px): {masked * 1e3:.2f} ms / batch, {b / masked:,.0f} frames/s: "
            f"{100 * (masked / fused - 1):+.0f} % over the fused step"
        )
    print(environment())
    print("\n".join(table))
    if args.record:
        append_result(f"Fused step throughput, config {args.config}", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
