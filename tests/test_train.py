"""Training: loss falls, resume is exact, sharded = single device, multi-host, e2e gradients, export.

The training runs go to subprocesses: each needs its own device count (4 simulated CPU
devices, 2 processes x 2 devices) and they run with ``--xla_backend_optimization_level=0``,
which compiles these tiny networks 3-5x faster on a CPU (the programs are the same; only
LLVM's optimisation of the CPU code is skipped), without touching this process's flags.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "train" / "configs"

# The centre run of the tests: center_tiny with a short schedule and a log line per step.
CENTER_SETS = [
    "steps=40",
    "warmup_steps=5",
    "lr=3e-3",
    "log_every=1",
    "eval_every=40",
    "eval_batches=2",
    "checkpoint_every=1000",
    "patience=None",
    "batch_size=16",
]


_CACHE: list[str] = []  # one persistent compilation cache for every subprocess of the session


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    _CACHE.append(str(tmp_path_factory.mktemp("jax_cache")))
    yield
    _CACHE.pop()


def _env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    if _CACHE:  # the runs share most programs: compile each once
        env.update(
            JAX_COMPILATION_CACHE_DIR=_CACHE[-1],
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    flags = "--xla_backend_optimization_level=0"
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    env["XLA_FLAGS"] = flags
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python(code: str, devices: int = 1, timeout: float = 1800) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object on its last line.

    ``timeout`` only guards against a hang: on a loaded machine (a training run beside
    the suite) the runs here took over 300 s, and a timeout must not fail a correct run."""
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=_env(devices), cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-6000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _metrics(path: Path, split: str = "train") -> dict[int, dict]:
    recs = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    drop = {"steps_per_s", "samples_per_s", "includes_compile"}
    return {r["step"]: {k: v for k, v in r.items() if k not in drop} for r in recs if r["split"] == split}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- in-process, cheap


def test_data_order_is_a_function_of_seed_and_step():
    from prenet_jax.internal import batch_indices

    n, b = 37, 8
    first = np.concatenate([batch_indices(3, s, n, b) for s in range(10)])
    again = np.concatenate([batch_indices(3, s, n, b) for s in range(10)])
    np.testing.assert_array_equal(first, again)
    # Every epoch is a permutation: each pattern once per epoch.
    assert sorted(first[:n]) == list(range(n))
    assert not np.array_equal(batch_indices(4, 0, n, b), batch_indices(3, 0, n, b))


def test_synthetic_splits_are_disjoint_by_structure():
    from prenet_jax.training import DataConfig, load_split

    cfg = DataConfig(size=32, n_structures=24, patterns_per_structure=2)
    splits = {s: load_split(cfg, s) for s in ("train", "val", "test")}
    ids = {s: set(v.structure) for s, v in splits.items()}
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    tr = splits["train"]
    assert tr.clean.shape[1:] == (32, 32) and tr.clean.dtype == np.float32
    np.testing.assert_allclose(tr.clean.sum((1, 2)), 1.0, rtol=1e-5)  # fractions of the incident electrons
    np.testing.assert_array_equal(tr.zero_angle, 16.0)  # the abTEM convention (S/2, S/2)


def test_simulated_source_reads_the_pattern_store(tmp_path):
    from prenet_jax.data import write_shard
    from prenet_jax.training import DataConfig, load_split

    rng = np.random.default_rng(0)
    pats = rng.random((5, 16, 16)).astype(np.float32)
    write_shard(tmp_path / "patterns" / "shard-00000.h5", {"patterns": pats, "meta": {"uid": np.array([f"p{i}" for i in range(5)])}})
    rows = ["uid,dataset,shard,index,structure_id,split,zero_angle"]
    splits = ["train", "val", "train", "test", "train"]
    rows += [f"p{i},patterns,patterns/shard-00000.h5,{i},s{i},{splits[i]},8.0 8.0" for i in range(5)]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    s = load_split(DataConfig(source="simulated", root=str(tmp_path)), "train")
    np.testing.assert_array_equal(s.clean, pats[[0, 2, 4]])
    np.testing.assert_array_equal(s.zero_angle, 8.0)
    assert list(s.structure) == ["s0", "s2", "s4"]


def test_configs_load_in_every_size_and_the_release_weights_fit_the_package():
    import jax

    import prenet_jax as pj
    from prenet_jax.internal import fresh_variables as _fresh_variables
    from prenet_jax.models import count_params
    from prenet_jax.training.config import TrainConfig, load_config, override

    files = sorted(f for f in CONFIGS.glob("*.py") if not f.name.startswith("_"))  # _base.py: what they share
    assert {f.stem for f in files} == {"denoiser", "center", "ellipse", "e2e"}  # one file per network
    release_params = {}
    for f in files:
        for size in ("tiny", "release", "paper"):
            cfg = load_config(f"{f}:{size}")
            assert isinstance(cfg, TrainConfig) and cfg.name == f"{f.stem}_{size}"
            assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
            if size == "release":
                # The e2e fine-tune combines the three: one architecture for all.
                assert cfg.pipeline == pj.PipelineConfig.release()
                shapes = jax.eval_shape(lambda: _fresh_variables(cfg, jax.random.key(0)))
                release_params.update({k: count_params(shapes[k]["params"]) for k in cfg.trained})
        with pytest.raises(ValueError, match="unknown size"):
            load_config(f"{f}:huge")
    assert set(release_params) == {"denoiser", "center_net", "center_fine", "ellipse_net"}
    assert 4 * sum(release_params.values()) < 60e6  # the shipped float32 weights: at most 60 MB
    cfg = override(load_config(f"{CONFIGS / 'denoiser.py'}:tiny"), "pipeline.denoiser.width", "8")
    assert cfg.pipeline.denoiser.width == 8
    assert override(cfg, "augment.dose_range", "(1e2, 1e3)").augment.dose_range == (100.0, 1000.0)
    with pytest.raises(ValueError, match="unknown setting"):
        override(cfg, "pipeline.nope", "1")


def test_matrix_from_output_is_the_ellipse_matrix():
    import jax.numpy as jnp

    from prenet_jax.conventions import ellipse_matrix
    from prenet_jax.internal import ellipse_targets, matrix_from_output, residual_ratio

    ratio = jnp.array([1.0, 1.05, 1.2, 1.1])
    angle = jnp.array([0.3, 0.0, 2.0, 3.1])
    out = ellipse_targets(ratio, angle)
    np.testing.assert_allclose(matrix_from_output(out), ellipse_matrix(ratio, angle), atol=2e-6)
    np.testing.assert_allclose(residual_ratio(matrix_from_output(out), ellipse_matrix(ratio, angle)), 1.0, atol=1e-5)
    # No correction at all leaves the ring's own ratio.
    np.testing.assert_allclose(residual_ratio(jnp.broadcast_to(jnp.eye(2), (4, 2, 2)), ellipse_matrix(ratio, angle)), ratio, atol=1e-5)


# ----------------------------------------------------------------------------- training runs (subprocesses)
# The centre runs are made once per module (``_center_runs``); the Makefile runs the
# suite with ``--dist loadfile``, so one worker runs this file and the runs are made once.


def _center_cmd(workdir: Path, *extra: str) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "prenet_jax.cli",
        "train",
        "run",
        "--config",
        str(CONFIGS / "center.py") + ":tiny",
        "--workdir",
        str(workdir),
    ]
    for s in CENTER_SETS:
        cmd += ["--set", s]
    return cmd + list(extra)


@pytest.fixture(scope="module")
def _center_runs(tmp_path_factory):
    """Job A (1 process, 1 device): the centre error on fixed validation batches before
    training, a run of 40 steps (``a``), the same run interrupted at step 25 and resumed
    (``b``), and ``a`` exported and run through the Pipeline. Job B, at the same time:
    the same run on 2 processes x 2 CPU devices (jax.distributed.initialize, gloo),
    stopped at step 3 (``mh``)."""
    wd = tmp_path_factory.mktemp("center_runs")
    port = _free_port()
    multi = [
        subprocess.Popen(
            _center_cmd(
                wd / "mh",
                "--stop-at",
                "3",
                "--set",
                "eval_batches=0",
                "--coordinator",
                f"localhost:{port}",
                "--num-processes",
                "2",
                "--process-id",
                str(i),
                "--cpu-collectives",
                "gloo",
            ),
            env=_env(2),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    out = _python(f"""
        import json, numpy as np, jax
        from pathlib import Path
        import prenet_jax as pj
        from prenet_jax.training import export, load_config, override, train
        from prenet_jax.corruption import augment
        from prenet_jax.internal import Data as _Data
        from prenet_jax.internal import evaluate, init_state, make_eval_step, make_mesh, make_optimizer
        wd = Path({str(wd)!r})
        cfg = load_config({str(CONFIGS / "center.py") + ":tiny"!r})
        for s in {CENTER_SETS!r}:
            cfg = override(cfg, *s.split('='))
        mesh = make_mesh()
        val = _Data(cfg, 'val', mesh)
        tx, _ = make_optimizer(cfg)
        state = jax.jit(lambda: init_state(cfg, jax.random.key(cfg.seed), tx))()
        before = evaluate(make_eval_step(cfg, mesh), state, val, cfg)
        a = train(cfg, wd / 'a', log=None)
        b1 = train(cfg, wd / 'b', stop_at=25, log=None)
        b2 = train(cfg, wd / 'b', log=None)
        export(wd / 'weights', {{'center': wd / 'a'}})
        pipe = pj.Pipeline.from_pretrained(wd / 'weights')
        aug = augment(jax.random.key(7), jax.numpy.asarray(val.clean[:16]), jax.numpy.asarray(val.zero[:16]), cfg.augment)
        found = pipe.find_centers(np.maximum(np.asarray(aug.noisy), 0))
        err = np.linalg.norm(found - np.asarray(aug.center), axis=-1)
        # Shipping a chosen subset, with pipeline settings of its own.
        export(wd / 'coarse', {{'center': wd / 'a'}}, networks=('center_net',), overrides={{'center_consensus': 'com'}})
        coarse = pj.Pipeline.from_pretrained(wd / 'coarse')
        err_coarse = np.linalg.norm(coarse.find_centers(np.maximum(np.asarray(aug.noisy), 0)) - np.asarray(aug.center), axis=-1)
        try:
            export(wd / 'bad', {{'center': wd / 'a'}}, networks=('ellipse_net',))
            bad = ''
        except ValueError as e:
            bad = str(e)
        print(json.dumps({{'before': before, 'a': a, 'b1': b1, 'b2': b2, 'pipeline_err': float(err.mean()),
                          'methods': [pipe.config.denoise_method, pipe.config.center_method, pipe.config.ellipse_method],
                          'coarse': [sorted(coarse.params), coarse.config.center_consensus, coarse.config.center_fine is None],
                          'coarse_err': float(err_coarse.mean()), 'bad': bad, 'bad_exists': (wd / 'bad').exists()}}))
    """)
    for p in multi:
        log, _ = p.communicate(timeout=1800)
        assert p.returncode == 0, log[-4000:]
    return wd, out


@pytest.mark.slow
def test_center_training_lowers_the_error(_center_runs):
    wd, out = _center_runs
    # A few dozen steps: the centre error on the fixed validation batches falls by more than half.
    before, after = out["before"]["center_err"], out["a"]["val"]["center_err"]
    assert after < 0.5 * before, (before, after)  # measured: ~4.8 px -> ~0.7 px in 40 steps
    assert out["a"]["status"] == "finished" and out["a"]["step"] == 40
    assert (wd / "a" / "curves.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_run_interrupted_and_resumed_repeats_an_uninterrupted_one(_center_runs):
    wd, out = _center_runs
    # Interrupted at 25 and resumed: the same numbers, step for step (same data, same keys).
    assert (out["b1"]["status"], out["b1"]["step"]) == ("paused", 25)
    assert (out["b2"]["status"], out["b2"]["step"]) == ("finished", 40)
    a, b = _metrics(wd / "a" / "metrics.jsonl"), _metrics(wd / "b" / "metrics.jsonl")
    assert sorted(b) == list(range(1, 41))
    for s in range(1, 41):
        assert a[s] == b[s], (s, a[s], b[s])
    assert _metrics(wd / "a" / "metrics.jsonl", "val") == _metrics(wd / "b" / "metrics.jsonl", "val")


@pytest.mark.slow
def test_an_exported_run_loads_into_the_pipeline_with_its_provenance(_center_runs):
    """Export -> Pipeline.from_pretrained: the run's best parameters, a manifest, and the
    exported network finds centres through the inference pipeline."""
    from prenet_jax.pipeline import load_weights
    from prenet_jax.training import load_run_variables

    wd, out = _center_runs
    cfg, params, manifest = load_weights(wd / "weights")
    assert out["methods"] == ["gaussian", "network", "fit"]  # the stages without a network: classical
    _, run_vars, meta = load_run_variables(wd / "a")
    for x, y in zip(_leaves(params["center_net"]), _leaves(run_vars["center_net"])):
        np.testing.assert_array_equal(x, y)
    info = manifest["networks"]["center_net"]
    assert info["widths"]["width"] == cfg.center_net.width and info["seed"] == 0 and info["steps"] == 40
    assert info["best_step"] == meta["step"] and "center_err" in info["validation"]
    assert "git_commit" in manifest and manifest["versions"]["jax"]
    assert out["pipeline_err"] < 1.0
    # A chosen subset ships alone, with its own settings; a network the runs lack is named.
    assert out["coarse"] == [["center_net"], "com", True] and out["coarse_err"] < 1.5
    assert "['ellipse_net'] are not in the runs" in out["bad"] and not out["bad_exists"]


@pytest.mark.slow
def test_two_processes_of_two_devices_train_as_one_device(_center_runs):
    """2 processes x 2 devices = 1 process x 1 device (the global batch is split by process)."""
    wd, _ = _center_runs
    a = _metrics(wd / "a" / "metrics.jsonl")
    mh = _metrics(wd / "mh" / "metrics.jsonl")
    assert sorted(mh) == [1, 2, 3]
    for s in (1, 2, 3):
        np.testing.assert_allclose(mh[s]["loss"], a[s]["loss"], rtol=1e-4)
        np.testing.assert_allclose(mh[s]["center_err"], a[s]["center_err"], rtol=1e-4)
    summary = json.loads((wd / "mh" / "summary.json").read_text())
    assert (summary["devices"], summary["processes"], summary["status"]) == (4, 2, "paused")


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


@pytest.mark.slow
def test_sharded_step_matches_single_device_and_its_checkpoint_restores_on_one_device(tmp_path):
    """4 simulated CPU devices: the ellipse step (ResNet with BatchNorm over the global
    batch, augmentation, recentring warp) equals the 1-device step; a checkpoint written by
    that 4-device process restores in this 1-device one, as numpy and onto explicit shardings."""
    out = _python(
        f"""
        import json, numpy as np, jax
        from pathlib import Path
        from prenet_jax.training import load_config, override, train
        from prenet_jax.internal import Data as _Data
        from prenet_jax.internal import fresh_variables as _fresh_variables
        from prenet_jax.internal import init_state, make_mesh, make_optimizer, make_train_step
        from prenet_jax.internal import put_replicated as _put_replicated
        assert jax.device_count() == 4
        cfg = load_config({str(CONFIGS / "ellipse.py") + ":tiny"!r})
        for s in ('batch_size=8', 'steps=2', 'eval_batches=0', 'pipeline.ellipse_net.stages=(1, 1)'):
            cfg = override(cfg, *s.split('='))
        tx, sched = make_optimizer(cfg)
        variables = jax.device_get(jax.jit(lambda: _fresh_variables(cfg, jax.random.key(0)))())
        outs = []
        for devs in (jax.devices(), jax.devices()[:1]):
            mesh = make_mesh(devs)
            data = _Data(cfg, 'train', mesh)
            state = jax.jit(lambda v: init_state(cfg, jax.random.key(0), tx, v))(_put_replicated(variables, mesh))
            step = make_train_step(cfg, tx, sched, mesh)
            for i in range(2):
                state, m = step(state, *data.train_batch(cfg.seed, i, cfg.batch_size))
            assert len(state['params']['ellipse_net']['head']['kernel'].sharding.device_set) == len(devs)
            outs.append((jax.device_get(m), jax.device_get(state['params']), jax.device_get(state['extra'])))
        (m4, p4, e4), (m1, p1, e1) = outs
        diff = lambda x, y: max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))
        train(cfg, Path({str(tmp_path)!r}) / 'ck', log=None)
        print(json.dumps({{'loss': [float(m4['loss']), float(m1['loss'])], 'param_diff': diff(p4, p1),
                          'stats_diff': diff(e4, e1), 'param_scale': max(float(np.abs(b).max()) for b in jax.tree.leaves(p1))}}))
    """,
        devices=4,
    )
    np.testing.assert_allclose(out["loss"][0], out["loss"][1], rtol=1e-5)
    assert out["param_diff"] < 1e-5 * max(1.0, out["param_scale"]), out
    assert out["stats_diff"] < 1e-4, out  # BatchNorm statistics of the global batch

    import jax

    from prenet_jax.internal import Checkpoints as _Checkpoints
    from prenet_jax.internal import abstract_state as _abstract
    from prenet_jax.internal import init_state, make_mesh, make_optimizer
    from prenet_jax.internal import run_config as _run_config
    from prenet_jax.training import load_run_variables

    _, variables, _ = load_run_variables(tmp_path / "ck", which="last")  # as numpy: any machine
    assert set(variables) == {"ellipse_net"} and "batch_stats" in variables["ellipse_net"]
    cfg = _run_config(tmp_path / "ck")  # onto this machine's shardings: what resuming a GPU run on a CPU does
    tx, _ = make_optimizer(cfg)
    target = _abstract(jax.eval_shape(lambda: init_state(cfg, jax.random.key(0), tx)), make_mesh())
    ck = _Checkpoints(tmp_path / "ck" / "checkpoints", read_only=True)
    state, meta = ck.restore(None, target)
    ck.close()
    assert int(state["step"]) == 2 and meta["elapsed_s"] > 0
    for x, y in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(variables["ellipse_net"]["params"])):
        assert x.sharding.device_set == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(x), y)


@pytest.mark.slow
def test_e2e_gradients_reach_all_three_networks_and_lower_the_error_on_a_fixed_batch():
    """The end-to-end step: finite, non-zero gradients in the denoiser, the centre network
    and the ellipse network (through the composed warp and the mean pattern), and six
    steps on one fixed batch (the step counter, hence the key, held at 0) lower its error."""
    out = _python(f"""
        import json, numpy as np, jax, jax.numpy as jnp
        from prenet_jax.training import load_config, override
        from prenet_jax.internal import Data as _Data
        from prenet_jax.internal import fresh_variables as _fresh_variables
        from prenet_jax.internal import init_state, make_mesh, make_optimizer, make_train_step
        from prenet_jax.internal import put_replicated as _put_replicated
        cfg = load_config({str(CONFIGS / "e2e.py") + ":tiny"!r})
        for s in ('init_from={{}}', 'warmup_steps=0', 'lr=1e-2', 'pipeline.denoiser.depth=1', 'pipeline.center_net.depth=1',
                  'pipeline.ellipse_net.stages=(1,)'):
            cfg = override(cfg, *s.split('=', 1))
        tx, sched = make_optimizer(cfg)
        variables = jax.device_get(jax.jit(lambda: _fresh_variables(cfg, jax.random.key(0)))())
        # Move the untrained head off (cos 2t, sin 2t) = (0, 0): there the warp does not
        # depend on the ellipse output at all (a saddle), so no gradient could reach it.
        head = variables['ellipse_net']['params']['head']
        head['kernel'] = np.random.default_rng(0).normal(0, 0.05, head['kernel'].shape).astype(np.float32)
        mesh = make_mesh()
        state = jax.jit(lambda v: init_state(cfg, jax.random.key(0), tx, v))(_put_replicated(variables, mesh))
        step = make_train_step(cfg, tx, sched, mesh)
        fixed = _Data(cfg, 'train', mesh).eval_batch(0, cfg.batch_size)
        rmse, norms = [], []
        for i in range(7):
            state, m = step({{**state, 'step': jnp.zeros((), jnp.int32)}}, *fixed)
            rmse.append(float(m['image_rmse']))
            norms.append({{k[10:]: float(v) for k, v in m.items() if k.startswith('grad_norm_')}})
        print(json.dumps({{'rmse': rmse, 'norms': norms}}))
    """)
    for g in out["norms"]:
        assert set(g) == {"denoiser", "center_net", "ellipse_net"}, g
        assert all(np.isfinite(v) and v > 1e-6 for v in g.values()), g
    rmse = out["rmse"]  # rmse[i] is measured before update i
    assert all(np.isfinite(rmse)) and rmse[-1] < 0.9 * rmse[0], rmse


@pytest.mark.slow
def test_the_export_command_ships_a_chosen_subset(_center_runs, tmp_path, capsys):
    from prenet_jax.cli import main
    from prenet_jax.pipeline import load_weights

    wd, _ = _center_runs
    argv = ["train", "export", "-o", str(tmp_path / "w"), "--center", str(wd / "a"), "--networks", "center_net"]
    assert main(argv + ["--center-consensus", "friedel"]) == 0
    cfg, params, manifest = load_weights(tmp_path / "w")
    assert set(params) == {"center_net"} and set(manifest["networks"]) == {"center_net"}
    assert (cfg.denoise_method, cfg.center_method, cfg.ellipse_method, cfg.center_consensus) == ("gaussian", "network", "fit", "friedel")
    assert main(["train", "export", "-o", str(tmp_path / "x"), "--center", str(wd / "a"), "--networks", "ellipse_net"]) == 2
    assert "['ellipse_net'] are not in the runs" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_center_real_config_adds_real_detector_effects_with_finite_labels():
    """The ``real`` centre config starts from the bundled networks and draws what real
    detectors add; none of its frames lacks a beam, so every label is finite."""
    import jax

    from prenet_jax.corruption import augment
    from prenet_jax.training import TrainConfig, load_config

    cfg = load_config(str(CONFIGS / "center.py") + ":real")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # the new fields survive a checkpoint
    assert cfg.augment.saturation_fraction > 0 and cfg.augment.edge_fraction > 0 and cfg.augment.no_beam_fraction == 0
    assert set(cfg.init_from) == {"center_net", "center_fine"}
    assert all(Path(p, "manifest.json").exists() for p in cfg.init_from.values())
    clean = np.zeros((8, 64, 64), np.float32)
    clean[:, 28:36, 28:36] = 1.0 / 64
    a = augment(jax.random.key(0), clean, np.array([32.0, 32.0], np.float32), cfg.augment)
    assert np.all(np.isfinite(np.asarray(a.center))) and np.all(np.isfinite(np.asarray(a.noisy)))
