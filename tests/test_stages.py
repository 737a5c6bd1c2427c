"""The stage table (prenet_jax/stages.py): what the pipeline, training, export and the
command line derive from it, and that no other module spells a network key."""

import ast
from pathlib import Path

import pytest

import prenet_jax as pj
from prenet_jax import stages
from prenet_jax.stages import CENTER, DENOISE, ELLIPSE, NETWORKS, STAGES, TASKS

PACKAGE = Path(pj.__file__).resolve().parent
# The table itself, the configuration that holds each network's widths under its key,
# and the stage functions that apply the networks.
SPELLS_KEYS = {"stages.py", "config.py", "pipeline/_stages.py"}


def test_every_stage_names_real_configuration_fields_and_a_classical_fallback():
    cfg = pj.PipelineConfig()
    for s in STAGES:
        assert getattr(cfg, s.method_field) in s.methods
        assert s.classical in s.methods and s.classical not in ("network", "none")
        for n in s.networks:
            assert hasattr(cfg, n.key) and all(hasattr(cfg, f) for f in n.fields)
            assert n.refines is None or n.refines in s.keys
    assert {s.method_field: getattr(pj.PipelineConfig.classical(), s.method_field) for s in STAGES} == stages.classical_methods()
    assert NETWORKS == ("denoiser", "center_net", "center_fine", "ellipse_net")
    assert TASKS == ("denoiser", "center", "ellipse", "e2e")


def test_the_networks_a_config_runs_and_the_methods_that_run_given_networks():
    shipped = pj.Pipeline.from_pretrained()
    assert set(stages.networks_in(shipped.config)) == set(shipped.params) == set(CENTER.keys)
    one_pass = shipped.config.replace(center_fine=None)
    assert stages.networks_in(one_pass) == ("center_net",)
    assert stages.networks_in(pj.PipelineConfig.classical()) == ()
    assert stages.methods_for({"center_net": {}}) == {"denoise_method": "gaussian", "center_method": "network", "ellipse_method": "fit"}
    assert stages.methods_for(set(NETWORKS)) == {s.method_field: "network" for s in STAGES}
    # A pipeline whose config asks for a network it was not given names it.
    with pytest.raises(ValueError, match="ellipse_net"):
        pj.Pipeline(pj.PipelineConfig.classical(ellipse_method="network"))


def test_tasks_train_their_stages_networks_and_are_judged_by_their_metric():
    cfg = pj.PipelineConfig.release()  # coarse to fine
    assert cfg.center_fine is not None
    assert stages.task_networks("center", cfg) == CENTER.keys
    assert stages.task_networks("center", cfg.replace(center_fine=None)) == ("center_net",)
    assert stages.task_networks("e2e", cfg) == NETWORKS
    assert stages.task_networks(DENOISE.task, cfg) == ("denoiser",)
    assert [stages.task_metric(t) for t in TASKS] == ["psnr", "center_err", "residual_ratio", "image_rmse"]
    assert stages.stage_of("ellipse_method") is stages.stage_of("ellipse_net") is ELLIPSE
    with pytest.raises(KeyError, match="task"):
        stages.task_networks("segmentation", cfg)
    with pytest.raises(KeyError, match="names no stage"):
        stages.stage_of("beam_stop")


def test_no_module_but_the_tables_spells_a_network_key():
    """One place per fact: a module that needs a network's key reads it from the table."""
    spelled = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text())
        keys = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in NETWORKS}
        if keys:
            spelled[rel] = keys
    assert set(spelled) <= SPELLS_KEYS, {k: v for k, v in spelled.items() if k not in SPELLS_KEYS}
