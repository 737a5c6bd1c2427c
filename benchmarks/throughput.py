"""Frames/s and latency of each stage and of the fused step: JAX vs PyTorch, one device, one run.

For every batch size: JAX (jit, bf16 compute on GPU), PyTorch eager (channels_last,
bf16 autocast on GPU) and ``torch.compile`` (max-autotune on GPU) run the denoiser,
the centre network and the fused step on the same random uint16 frames. Reports
median latency per batch, frames/s, achieved TFLOP/s from XLA's ``cost_analysis``
of the JAX programs against a bf16 matmul ceiling measured in the same run, and
peak device memory. Appends the table to ``benchmarks/RESULTS.md`` with ``--record``.

    python benchmarks/throughput.py --batches 32 128 512 --record          # on the GPU machine
    python benchmarks/throughput.py --config tiny --size 64 --batches 8    # CPU smoke run
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
from prenet_jax.pipeline import as_counts, center_stage, denoise_stage


def _median_time(fn, sync, repeats: int) -> float:
    sync(fn())  # warm-up holds the compile
    sync(fn())
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sync(fn())
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def matmul_ceiling(repeats: int) -> float:
    """Measured bf16 (fp32 on CPU) matmul TFLOP/s of this device."""
    n = 8192 if jax.default_backend() != "cpu" else 1024
    dt = jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32
    a = jax.random.normal(jax.random.key(0), (n, n), dt)
    f = jax.jit(lambda a: a @ a)
    t = _median_time(lambda: f(a), jax.block_until_ready, repeats)
    return 2 * n**3 / t / 1e12


def _flops(jitted, *args) -> float:
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops", float("nan")))
    except Exception:  # cost analysis is best effort on some backends
        return float("nan")


def _peak_mem() -> float:
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use", float("nan")) / 2**30
    except Exception:
        return float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="release", choices=["release", "default", "tiny"])
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args(argv)
    gpu = jax.default_backend() != "cpu"
    dtype = "bfloat16" if gpu else "float32"
    mk = {"release": pj.PipelineConfig.release, "default": pj.PipelineConfig, "tiny": pj.PipelineConfig.tiny}[args.config]
    ceiling = matmul_ceiling(args.repeats)
    lines = [
        f"config `{args.config}`: denoiser width {mk().denoiser.width} depth {mk().denoiser.depth} (CBAM), centre net width {mk().center_net.width} depth {mk().center_net.depth}; "
        f"{args.size}x{args.size} uint16 frames; JAX compute {dtype}; median of {args.repeats}; matmul ceiling measured {ceiling:.3g} TFLOP/s",
        "",
        "| batch | what | JAX ms | JAX frames/s | JAX TFLOP/s | torch eager frames/s | torch.compile frames/s | JAX vs eager | JAX vs compile |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    torch = None
    if not args.no_torch:
        try:
            import torch
            import torch_reference as tr
        except ImportError:
            print("torch not installed: JAX only")
    for b in args.batches:
        cfg = mk(compute_dtype=dtype, batch_size=b, image_size=args.size)
        pipe = pj.Pipeline.init(jax.random.key(0), cfg)
        host = np.random.default_rng(0).integers(0, 4000, (pipe.batch_size, args.size, args.size), dtype=np.uint16)
        frames = jax.device_put(host, pipe.data_sharding)
        m = jax.device_put(jnp.asarray(pj.Ellipse(1.05, 0.3).matrix(), jnp.float32), pipe.replicated)
        xf = jax.jit(lambda f: as_counts(f)[0])(frames)
        den = jax.jit(lambda p, x: denoise_stage(cfg, p, x))
        cen = jax.jit(lambda p, x: center_stage(cfg, p, x))
        jax_fns = {
            "denoiser": (den, (pipe.params, xf)),
            "centre net + CoM": (cen, (pipe.params, xf)),
            "fused step": (pipe.step_fn, (pipe.params, frames, m)),
        }
        jt = {k: _median_time(lambda f=f, a=a: f(*a), jax.block_until_ready, args.repeats) for k, (f, a) in jax_fns.items()}
        fl = {k: _flops(f, *a) for k, (f, a) in jax_fns.items()}
        tt = {}
        if torch is not None:
            dev = "cuda" if torch.cuda.is_available() else "cpu"
            tp = tr.TorchPipeline.from_pipeline(pipe).to(dev).to(memory_format=torch.channels_last)
            tf = torch.from_numpy(host.astype(np.int32)).to(dev)
            tx = tf.float()
            tm = torch.from_numpy(pj.Ellipse(1.05, 0.3).matrix().astype(np.float32)).to(dev)
            sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)

            def mods(model):
                def denoise():
                    xn, s = model._normalize(tx)
                    return model.denoiser(xn[:, None].contiguous(memory_format=torch.channels_last))

                def centre():
                    xn, _ = model._normalize(tx)
                    return tr.heatmap_center(model.center_net(xn[:, None].contiguous(memory_format=torch.channels_last)).float())

                return {"denoiser": denoise, "centre net + CoM": centre, "fused step": lambda: model(tf, tm)}

            ac = torch.autocast(dev, dtype=torch.bfloat16, enabled=gpu)
            with torch.no_grad(), ac:
                tt["eager"] = {k: _median_time(f, sync, args.repeats) for k, f in mods(tp).items()}
                comp = mods(tp)
                compiled = {k: torch.compile(f, mode="max-autotune" if gpu else "default") for k, f in comp.items()}
                tt["compile"] = {k: _median_time(f, sync, args.repeats) for k, f in compiled.items()}
        for k in jax_fns:
            n = pipe.batch_size
            e = tt.get("eager", {}).get(k)
            c = tt.get("compile", {}).get(k)
            cell = lambda t: f"{n / t:,.0f}" if t else "-"
            ratio = lambda t: f"{t / jt[k]:.2f}x" if t else "-"
            lines.append(
                f"| {n} | {k} | {jt[k] * 1e3:.2f} | {n / jt[k]:,.0f} | {fl[k] / jt[k] / 1e12:.3g} | {cell(e)} | {cell(c)} | {ratio(e)} | {ratio(c)} |"
            )
        nets = jt["denoiser"] + jt["centre net + CoM"]
        lines.append(f"| {pipe.batch_size} | fused / (denoiser + centre) | {jt['fused step'] / nets:.2f} | | | | | | |")
    lines.append("")
    lines.append(f"peak device memory: {_peak_mem():.2f} GiB")
    print(environment())
    print("\n".join(lines))
    if args.record:
        append_result(f"Throughput, JAX vs PyTorch, config {args.config}", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
