"""The release recipe, end to end at a tiny size: simulate -> three networks -> e2e ->
ship -> held-out set -> evaluation, interrupted by its time limit and resumed."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _helpers import TINY_SIM

pytest.importorskip("abtem")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "train" / "configs"


def _recipe(tmp: Path):
    from prenet_jax.data import SimulationConfig
    from prenet_jax.evaluation import EvalConfig, EvalSetConfig
    from prenet_jax.recipe import Recipe
    from prenet_jax.training import load_config

    ids = ("compound:MgO-rocksalt", "ase:Al", "ase:Cu", "compound:GaAs-zincblende", "amorphous:a-Si:000", "ase:Si")
    sim = SimulationConfig(structure_ids=ids, n_patterns=48, tasks_per_shard=2, split_fractions=(0.5, 0.5, 0.0), **TINY_SIM)
    short = dict(steps=6, log_every=3, eval_every=3, eval_batches=1, checkpoint_every=3, patience=None)
    stages = {}
    for name in ("denoiser", "center", "ellipse", "e2e"):
        cfg = load_config(f"{CONFIGS / name}.py:tiny")
        data = cfg.data.__class__(source="simulated", root="unused", rotation_average=cfg.data.rotation_average)
        init = {k: str(tmp / "unused" / Path(v).name) for k, v in cfg.init_from.items()}
        stages[name] = cfg.replace(data=data, init_from=init, batch_size=8, **short)
    evalset = EvalSetConfig(n_patterns=8, n_scans=2, scan_frames=4, pattern_size=32, gpts=48)
    # The evaluation's plumbing, not its statistics (tests/test_evaluate.py has those): one
    # dose, two of its tables, few rotations.
    evaluation = EvalConfig(doses=(1e4,), ellipses_per_group=2, rotations=4, mean_frames=64, e2e_scan=(2, 4), e2e_cubes=("analytic",))
    return Recipe(
        simulation=sim,
        stages=stages,
        evalset=evalset,
        evaluation=evaluation,
        eval_tables=("denoise", "centers"),
        weights=tmp / "shipped",
        report=tmp / "EVAL.md",
        e2e_check_batches=1,
        # A chosen subset ships, with its own settings; the ellipse stage runs its fit.
        ship_networks=("denoiser", "center_net"),
        ship_overrides={"center_consensus": "com"},
    )


@pytest.mark.slow
def test_the_release_recipe_resumes_ships_improved_weights_and_evaluates(tmp_path):
    import prenet_jax as pj
    from prenet_jax.recipe import run_recipe

    recipe = _recipe(tmp_path)
    wd = tmp_path / "work"
    lines: list[str] = []
    # A first call that runs out of time in the denoiser stage: the data are whole, the
    # denoiser checkpointed part-way, nothing else started.
    first = run_recipe(recipe, wd, stop_after="simulate", workers=1, log=lines.append)
    assert first["stage"] == "simulate"
    assert (wd / "sim" / "manifest.csv").exists() and not (wd / "runs").exists()
    state = json.loads((wd / "recipe.json").read_text())
    assert state["stages"]["simulate"]["status"] == "done" and state["stages"]["simulate"]["patterns"] == 48
    # The rest in one call: every network trains, the shipped weights follow each chunk.
    res = run_recipe(recipe, wd, workers=1, log=lines.append)
    assert res["status"] == "finished", lines[-20:]
    state = json.loads((wd / "recipe.json").read_text())
    assert all(state["stages"][s]["status"] == "done" for s in ("simulate", "denoiser", "center", "ellipse", "e2e", "evalset", "evaluate"))
    assert any("shipped" in ln for ln in lines)
    manifest = json.loads((recipe.weights / "manifest.json").read_text())
    verdict = state["stages"]["e2e"]["verdict"]
    # What ships is what the held-out end-to-end check chose, with the data recipe recorded.
    expected = {"e2e"} if verdict["keep"] else {"denoiser", "center", "ellipse"}
    assert set(manifest["recipe"]["best_steps"]) == expected
    assert manifest["recipe"]["simulation"]["n_patterns"] == 48
    assert {n["task"] for n in manifest["networks"].values()} == (expected - {"ellipse"})
    pipe = pj.Pipeline.from_pretrained(recipe.weights)
    assert set(pipe.params) == {"denoiser", "center_net"}
    assert (pipe.config.ellipse_method, pipe.config.center_consensus) == ("fit", "com")
    frames = np.random.default_rng(0).poisson(20.0, (2, 32, 32)).astype(np.float32)
    assert np.isfinite(pipe.find_centers(frames)).all()
    # The evaluation report exists and has its network rows.
    report = recipe.report.read_text()
    assert "ours" in report or "network" in report
    # A call with nothing left to do changes nothing.
    mtime = os.stat(recipe.weights / "weights.npz").st_mtime_ns
    again = run_recipe(recipe, wd, workers=1, log=lines.append)
    assert again["status"] == "finished" and os.stat(recipe.weights / "weights.npz").st_mtime_ns == mtime
