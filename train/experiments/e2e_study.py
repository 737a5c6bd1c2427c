"""Does end-to-end fine-tuning lower the end-to-end error?  Measured on held-out structures.

1. The three networks trained separately, each on its own loss (``S`` steps).
2a. From those, ``N`` steps of end-to-end fine-tuning (the corrected frames and the
    centres, through the composed warp, into all three networks).
2b. The control: from the same start, ``N`` more steps of each network on its own loss,
    with the same learning-rate schedule (so 2a and 2b differ only in the loss).

All three sets are scored by ``evaluate_e2e`` on the test structures (never trained on):
groups of 8 frames sharing an ellipse, the pipeline run end to end (denoise -> centre ->
recentred mean -> ellipse -> one warp), fixed keys.

    python train/experiments/e2e_study.py --out runs/e2e_study     # ~15 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from prenet_jax.training import evaluate_e2e, load_config, load_run_variables, override, train

HERE = Path(__file__).resolve().parent
NETS = {"denoiser": "denoiser", "center": "center_net", "ellipse": "ellipse_net"}
# Networks a little wider than the CI ones, so that each can learn its task at 32 px.
SIZES = {
    "pipeline.denoiser.width": 8,
    "pipeline.denoiser.depth": 3,
    "pipeline.center_net.width": 8,
    "pipeline.center_net.depth": 3,
    "pipeline.ellipse_net.width": 8,
    "pipeline.ellipse_net.stages": (1, 1, 1, 1),
}


def _cfg(name: str, sets: dict):
    cfg = load_config(f"{HERE.parent / 'configs' / name}.py:tiny")
    for k, v in {**SIZES, **sets}.items():
        cfg = override(cfg, k, v)
    return cfg


def _variables(runs: dict[str, Path]) -> dict:
    v = {}
    for task, path in runs.items():
        _, var, _ = load_run_variables(path)
        v.update({k: var[k] for k in var if k in NETS.values()} if task == "e2e" else {NETS[task]: var[NETS[task]]})
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/e2e_study")
    p.add_argument("--steps", type=int, default=1500, help="S: separate training steps per network")
    p.add_argument("--finetune", type=int, default=300, help="N: fine-tuning steps (end to end, and the control)")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of both fine-tunings")
    p.add_argument(
        "--center-weights",
        type=float,
        nargs="+",
        default=[1e-3, 0.03, 0.3],
        help="e2e_center_weight of the end-to-end runs (one fine-tuning each)",
    )
    p.add_argument("--eval-batches", type=int, default=32)
    args = p.parse_args(argv)
    out = Path(args.out)
    common = {"patience": None, "log_every": 50, "eval_every": 250}
    ft = {"steps": args.finetune, "lr": args.lr, "warmup_steps": min(50, args.finetune // 5), "eval_every": max(50, args.finetune // 4)}

    # 1. separately
    sep = {}
    for task in NETS:
        cfg = _cfg(task, {**common, "steps": args.steps, "warmup_steps": 100, "name": f"{task}_separate"})
        train(cfg, out / cfg.name)
        sep[task] = out / cfg.name
    # 2a. end to end (one run per weight of the centre term)
    e2e_runs = {}
    for w in args.center_weights:
        e2e = _cfg(
            "e2e",
            {
                **common,
                **ft,
                "name": f"e2e_finetune_cw{w:g}",
                "loss.e2e_center_weight": w,
                "init_from": {NETS[t]: str(sep[t]) for t in NETS},
            },
        )
        train(e2e, out / e2e.name)
        e2e_runs[f"end_to_end (center weight {w:g})"] = out / e2e.name
    # 2b. control: the same schedule, each on its own loss
    ctl = {}
    for task in NETS:
        cfg = _cfg(task, {**common, **ft, "name": f"{task}_control", "init_from": {NETS[task]: str(sep[task])}})
        train(cfg, out / cfg.name)
        ctl[task] = out / cfg.name

    pcfg = e2e.pipeline
    sets = {
        "separate": _variables(sep),
        "separate_plus_control": _variables(ctl),
        **{name: _variables({"e2e": path}) for name, path in e2e_runs.items()},
    }
    per = {name: evaluate_e2e(pcfg, v, e2e, "test", args.eval_batches, per_batch=True) for name, v in sets.items()}
    res = {name: {k: float(np.mean(v)) for k, v in m.items()} for name, m in per.items()}
    rows = list(res)
    # Paired over the same test batches: mean change against the separate networks and its standard error.
    for name in rows[1:]:
        for k in ("image_rmse", "center_err", "residual_ratio"):
            d = np.asarray(per[name][k]) - np.asarray(per["separate"][k])
            res[name][f"{k}_change_pct"] = float(100 * d.mean() / np.mean(per["separate"][k]))
            res[name][f"{k}_change_pct_se"] = float(100 * d.std(ddof=1) / np.sqrt(d.size) / np.mean(per["separate"][k]))
    res["setup"] = {
        "S": args.steps,
        "N": args.finetune,
        "lr": args.lr,
        "eval_frames": args.eval_batches * e2e.batch_size,
        "config": e2e.to_dict(),
    }
    (out / "e2e_study.json").write_text(json.dumps(res, indent=2))
    keys = ("image_rmse", "image_rel_l2", "center_err", "residual_ratio", "ratio_err", "angle_err_deg")
    print("| networks | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name in rows:
        print(f"| {name} | " + " | ".join(f"{res[name][k]:.4g}" for k in keys) + " |")
    print()
    print("| networks | image_rmse change | center_err change | residual_ratio change |  (% vs separate, +- standard error, paired)")
    print("|---|---|---|---|")
    for name in rows[1:]:
        print(
            f"| {name} | "
            + " | ".join(
                f"{res[name][k + '_change_pct']:+.1f} +- {res[name][k + '_change_pct_se']:.1f}"
                for k in ("image_rmse", "center_err", "residual_ratio")
            )
            + " |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
