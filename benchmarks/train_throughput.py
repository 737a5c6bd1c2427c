"""Training samples/s of each network of a training config family, on this machine.

Runs ``steps`` training steps of each task (after the compile, which the first log
window holds) on the simulated data set and reports the steady samples/s that the
training loop itself logs, plus the augmentation alone (frames/s of whole augmented
frames). A "sample" is what the network sees: a crop for the denoiser, a frame (both
centre passes) for the centre task, a mean pattern for the ellipse task, a frame for
end to end.

    python benchmarks/train_throughput.py --size release --steps 30 --record
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import numpy as np
from _common import append_result, environment

from prenet_jax.training import AugmentConfig, augment, load_config, train

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"
TASKS = ("denoiser", "center", "ellipse", "e2e")


def task_rate(name: str, size: str, steps: int, root: str | None) -> dict:
    cfg = load_config(f"{CONFIGS / name}.py:{size}")
    changes = dict(steps=steps, log_every=max(steps // 3, 1), eval_batches=0, checkpoint_every=10**9, init_from={})
    if root:
        changes["data"] = cfg.data.__class__(**{**cfg.data.__dict__, "root": root, "max_patterns": 512})
    cfg = cfg.replace(**changes)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, d, log=None)
        recs = [json.loads(ln) for ln in (Path(d) / "metrics.jsonl").read_text().splitlines()]
    steady = [r for r in recs if r["split"] == "train" and not r.get("includes_compile")]
    per_sample = cfg.batch_size * (cfg.crops_per_frame if cfg.crop_size else 1)
    sps = float(np.median([r["steps_per_s"] for r in steady]))
    return {"task": name, "batch": per_sample, "steps_per_s": sps, "samples_per_s": sps * per_sample}


def augment_rate(size: int, batch: int = 16, repeats: int = 5) -> float:
    clean = np.random.default_rng(0).random((batch, size, size), np.float32) * 1e-4
    zero = np.full((batch, 2), size / 2, np.float32)
    cfg = AugmentConfig()
    jax.block_until_ready(augment(jax.random.key(0), clean, zero, cfg))
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(augment(jax.random.key(i + 1), clean, zero, cfg))
        times.append(time.perf_counter() - t)
    return batch / float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="release", choices=("tiny", "release", "paper"))
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--data", default=None, help="simulated data set (default: the config's data.root)")
    ap.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    print(environment())
    rows = []
    for name in args.tasks:
        r = task_rate(name, args.size, args.steps, args.data)
        print(f"{name:9s} batch {r['batch']:3d}: {r['steps_per_s']:.3f} steps/s, {r['samples_per_s']:.1f} samples/s", flush=True)
        rows.append(r)
    aug = augment_rate(256)
    print(f"augmentation alone (256 px, cubic, Poisson): {aug:.0f} frames/s")
    if args.record:
        lines = [
            f"`python benchmarks/train_throughput.py --size {args.size} --steps {args.steps}` (float32; median of the logged windows after the compile)",
            "",
            "| task | batch (samples) | steps/s | samples/s |",
            "|---|---|---|---|",
        ]
        lines += [f"| {r['task']} | {r['batch']} | {r['steps_per_s']:.3f} | {r['samples_per_s']:.1f} |" for r in rows]
        lines += ["", f"Augmentation alone, 256 px frames, cubic warp + Poisson: {aug:.0f} frames/s."]
        append_result(f"Training throughput, {args.size} configs", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
