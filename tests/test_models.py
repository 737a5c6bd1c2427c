"""The three networks: shapes, dtypes, architecture, and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.models import count_params


def test_unet_shapes_and_ranges():
    cfg = pj.UNetConfig(width=4, depth=2, cbam=True, groups=2)
    net = pj.UNet(cfg, sigmoid=True)
    x = jnp.asarray(np.random.default_rng(0).random((3, 32, 48)), jnp.float32)
    v = net.init(jax.random.key(0), x)
    y = jax.jit(net.apply)(v, x)
    assert y.shape == (3, 32, 48) and y.dtype == jnp.float32
    assert float(y.min()) > 0 and float(y.max()) < 1
    assert "cbam" in v["params"]["down0"]
    plain = pj.UNet(pj.UNetConfig(width=4, depth=2, groups=2), sigmoid=False).init(jax.random.key(0), x)
    assert "cbam" not in plain["params"]["down0"]
    with pytest.raises(ValueError, match="divisible"):
        net.apply(v, jnp.zeros((1, 30, 32)))


def test_unet_frames_are_independent_in_a_batch():
    net = pj.UNet(pj.UNetConfig(width=4, depth=2, cbam=True, groups=2))
    x = jnp.asarray(np.random.default_rng(1).random((4, 16, 16)), jnp.float32)
    v = net.init(jax.random.key(0), x)
    y = net.apply(v, x)
    y2 = net.apply(v, x.at[3].set(1e6))  # a wild frame next door changes nothing
    np.testing.assert_allclose(np.asarray(y[:3]), np.asarray(y2[:3]), atol=1e-6)


def test_resnet50_architecture():
    net = pj.ResNet(pj.ResNetConfig())  # width 64, stages (3, 4, 6, 3)
    v = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 64, 64)))
    blocks = [k for k in v["params"] if k.startswith("stage")]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert v["params"]["stage3_block2"]["conv3"]["kernel"].shape == (1, 1, 512, 2048)
    n = count_params(v["params"])
    assert 23.4e6 < n < 23.6e6  # ResNet-50 without its 1000-class head, one input channel
    assert "batch_stats" in v


def test_resnet_untrained_predicts_no_distortion_and_trains():
    net = pj.ResNet(pj.ResNetConfig(width=4, stages=(1, 1, 1, 1)))
    x = jnp.asarray(np.random.default_rng(2).random((2, 32, 32)), jnp.float32)
    v = net.init(jax.random.key(0), x)
    y = net.apply(v, x, train=False)
    np.testing.assert_allclose(np.asarray(y), [[0, 0, 1]] * 2, atol=1e-6)

    def loss(params):
        out, _ = net.apply({"params": params, "batch_stats": v["batch_stats"]}, x, train=True, mutable=["batch_stats"])
        return jnp.sum((out - jnp.array([0.5, -0.5, 1.1])) ** 2)

    g = jax.grad(loss)(v["params"])
    assert all(np.isfinite(np.asarray(t)).all() for t in jax.tree_util.tree_leaves(g))
    assert float(jnp.abs(g["head"]["kernel"]).sum()) > 0


def test_bfloat16_compute_float32_params():
    net = pj.UNet(pj.UNetConfig(width=4, depth=2, groups=2), dtype=jnp.bfloat16)
    x = jnp.ones((1, 16, 16))
    v = net.init(jax.random.key(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(v))
    hlo = jax.jit(net.apply).lower(v, x).as_text()
    assert "bf16" in hlo  # convolutions run in bfloat16
    assert net.apply(v, x).dtype == jnp.float32
