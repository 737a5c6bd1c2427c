"""Parity of the PyTorch reference (benchmarks/torch_reference.py) with the Flax models.

Runs wherever torch is installed (the GPU machine has it); skipped otherwise.
"""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_reference as tr  # noqa: E402

import prenet_jax as pj  # noqa: E402


def _rel(a, b):
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / (np.abs(np.asarray(b)).max() + 1e-30))


@pytest.fixture(autouse=True)
def _fp32():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    with jax.default_matmul_precision("highest"):
        yield


@pytest.mark.parametrize("cbam", [True, False])
def test_unet_parity(cbam):
    cfg = pj.UNetConfig(width=8, depth=3, cbam=cbam, groups=4)
    x = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    v = pj.UNet(cfg).init(jax.random.key(1), x)
    # Randomise the GroupNorm affine too, so the converter is really exercised.
    v = jax.tree_util.tree_map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape), v)
    ours = pj.UNet(cfg).apply(v, x)
    ref = tr.load_flax(tr.UNet(cfg), v).eval()(torch.from_numpy(x)[:, None]).detach().numpy()
    assert _rel(ref, ours) < 1e-4


def test_resnet_parity():
    cfg = pj.ResNetConfig(width=8, stages=(3, 4, 6, 3))
    x = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    net = pj.ResNet(cfg)
    v = net.init(jax.random.key(1), x)
    k = iter(jax.random.split(jax.random.key(3), 10_000))
    # Non-trivial weights and statistics: zero-initialised layers would hide mistakes.
    v = jax.tree_util.tree_map(lambda a: a + 0.05 * jax.random.normal(next(k), a.shape), v)
    v["batch_stats"] = jax.tree_util.tree_map(jnp.abs, v["batch_stats"])
    ours = net.apply(v, x, train=False)
    ref = tr.load_flax(tr.ResNet(cfg), v).eval()(torch.from_numpy(x)[:, None]).detach().numpy()
    assert _rel(ref, ours) < 1e-4


def test_pipeline_centres_parity():
    cfg = pj.PipelineConfig.tiny(
        image_size=64, batch_size=4, denoiser=pj.UNetConfig(8, 3, cbam=True, groups=4), center_net=pj.UNetConfig(8, 3, groups=4)
    )
    pipe = pj.Pipeline.init(jax.random.key(0), cfg)
    frames = np.stack([pj.disk_pattern((64, 64), (30 + i, 33 - i), 8.0) * 100 for i in range(4)]).astype(np.float32)
    ell = pj.Ellipse(1.1, 0.4)
    out, centers, _ = (np.asarray(a) for a in pipe.step(frames, ell))
    tp = tr.TorchPipeline.from_pipeline(pipe)
    with torch.no_grad():
        t_out, t_centers = tp(torch.from_numpy(frames), torch.from_numpy(ell.matrix().astype(np.float32)))
    assert np.abs(t_centers.numpy() - centers).max() < 1e-3
    assert _rel(t_out.numpy(), out) < 1e-3
