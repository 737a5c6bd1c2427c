"""What real detectors and specimens add to a pattern, beyond shot and read noise.

Networks trained on clean simulations met a real Merlin scan (a saturated direct disk
cut off by the detector edge, beside bright diffuse lobes) and put near-identical
frames 60 px apart. Each effect here is drawn per frame with the probability its
:class:`prenet_jax.corruption.AugmentConfig` field gives (all 0 by default, so a config
without them draws exactly the batches it drew before):

- ``saturation_fraction``: the counts clip at a level (a counter's depth: 63 for a
  6-bit Merlin), a fraction ``saturation_level`` of the frame's brightest expected
  count, so the direct disk is a flat plateau;
- ``edge_fraction``: the beam centre lands ``edge_distance`` px from a random frame
  edge (negative: outside), so the disk is cut off;
- ``bragg_fraction``: the direct disk is dimmed by ``bragg_attenuation`` (thick or
  strongly diffracting crystals), so Bragg disks outshine it;
- ``kikuchi_fraction``: Kikuchi bands (bright bands with dark and bright edge lines)
  and broad diffuse lobes add ``kikuchi_strength`` times the pattern's own counts;
  they move with the pattern (descan moves the whole pattern);
- ``gap_fraction``: the gaps between detector panels (rows and columns near the
  middle, ``gap_width`` px wide) record nothing;
- ``no_beam_fraction``: no direct beam at all (blanked, off the detector): the frame
  holds only the Kikuchi and diffuse background; its centre label is NaN, and
  ``beam`` in the drawn parameters says which frames these are.

The dimmed disk acts on the clean pattern before the one resampling, the background on
the resampled pattern about its beam centre (both move with the descan); saturation and
gaps act on the recorded counts.
Saturation clips the target too (the counts above the level are lost, not noise);
gaps, like hot and dead pixels, are defects left out of the target.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["DETECTOR_EFFECTS", "after_noise", "any_effect", "after_warp", "before_warp", "direct_disk_radius", "draw", "edge_shifts"]

#: The per-frame probabilities of :class:`AugmentConfig` that switch an effect on.
DETECTOR_EFFECTS = ("saturation_fraction", "edge_fraction", "bragg_fraction", "kikuchi_fraction", "gap_fraction", "no_beam_fraction")

_BANDS = 3  # Kikuchi bands per frame
_LOBES = 2  # diffuse lobes per frame


def any_effect(config) -> bool:
    """Whether ``config`` switches on any effect of this module."""
    return any(getattr(config, f) > 0 for f in DETECTOR_EFFECTS)


def _between(u: jax.Array, lo: float, hi: float) -> jax.Array:
    return lo + (hi - lo) * u


def draw(key: jax.Array, batch: int, config) -> dict[str, jax.Array]:
    """The per-frame draws of every effect: an ``on`` mask per effect and its values."""
    k_on, k_val, k_bg = jax.random.split(key, 3)
    on = jax.random.uniform(k_on, (len(DETECTOR_EFFECTS), batch))
    u = jax.random.uniform(k_val, (8, batch))
    p = {f.removesuffix("_fraction"): on[i] < getattr(config, f) for i, f in enumerate(DETECTOR_EFFECTS)}
    p["saturation_level"] = _between(u[0], *config.saturation_level)
    p["edge_distance"] = _between(u[1], *config.edge_distance)
    p["edge_side"] = jnp.floor(u[2] * 4).astype(jnp.int32)  # 0 top, 1 bottom, 2 left, 3 right
    p["bragg_attenuation"] = _between(u[3], *config.bragg_attenuation)
    p["kikuchi_strength"] = _between(u[4], *config.kikuchi_strength)
    p["gap_width"] = jnp.round(_between(u[5], *config.gap_width))
    p["gap_offset"] = jnp.round(_between(u[6], -16.0, 16.0))
    p["background"] = jax.random.uniform(k_bg, (_BANDS * 4 + _LOBES * 4, batch))
    p["beam"] = ~p["no_beam"]
    return p


def edge_shifts(p: dict, shift: jax.Array, zero: jax.Array, shape: tuple[int, int]) -> jax.Array:
    """The descan shifts, replaced where the disk is cut off: the beam centre
    ``edge_distance`` px inside (negative: outside) the chosen frame edge."""
    h, w = shape
    c = zero + shift
    d = p["edge_distance"]
    side = p["edge_side"]
    row = jnp.where(side == 0, d, jnp.where(side == 1, h - 1 - d, c[:, 0]))
    col = jnp.where(side == 2, d, jnp.where(side == 3, w - 1 - d, c[:, 1]))
    moved = jnp.stack([row, col], -1) - zero
    return jnp.where(p["edge"][:, None], moved, shift)


def direct_disk_radius(clean: jax.Array, zero: jax.Array) -> jax.Array:
    """``(B,)`` radius (px) of the direct disk of clean patterns about their zero angle:
    the first whole radius where the azimuthal mean falls below half the central one."""
    h, w = clean.shape[-2:]
    n = int(math.hypot(h, w) / 2) + 2
    rr = jnp.arange(h, dtype=jnp.float32)[:, None]
    cc = jnp.arange(w, dtype=jnp.float32)[None, :]

    def one(im, z):
        r = jnp.hypot(rr - z[0], cc - z[1])
        b = jnp.clip(jnp.floor(r).astype(jnp.int32), 0, n - 1).ravel()
        prof = jax.ops.segment_sum(im.ravel(), b, n) / jnp.maximum(jax.ops.segment_sum(jnp.ones_like(im).ravel(), b, n), 1.0)
        below = prof < 0.5 * jnp.mean(prof[:2])
        return jnp.argmax(below).astype(jnp.float32)

    return jax.vmap(one)(clean, jnp.broadcast_to(zero, (clean.shape[0], 2)))


def _background(u: jax.Array, zero: jax.Array, shape: tuple[int, int], broad: bool = False) -> jax.Array:
    """``(B, H, W)`` Kikuchi bands and diffuse lobes about ``zero``, each frame summing to 1.

    ``broad``: the background of a frame without a beam, where nothing is compact: lobes
    of 0.3-0.6 frame widths, bands a modulation of them (an EBSD-like pattern; a lobe
    as compact as a disk would be a defocused beam, not its absence)."""
    h, w = shape
    rr = jnp.arange(h, dtype=jnp.float32)[None, :, None] - zero[:, 0, None, None]
    cc = jnp.arange(w, dtype=jnp.float32)[None, None, :] - zero[:, 1, None, None]
    out = jnp.zeros((zero.shape[0], h, w), jnp.float32)
    size = float(min(h, w))
    for i in range(_BANDS):
        a, o, wd, s = (u[4 * i + j][:, None, None] for j in range(4))
        ang = a * math.pi
        d = cc * jnp.cos(ang) + rr * jnp.sin(ang) - (o - 0.5) * 0.6 * size
        width = 0.04 * size + 0.08 * size * wd  # Kikuchi bands are broad: twice the Bragg angle
        # A bright band with sharper lines at its edges (the excess and deficit lines, both bright here).
        band = jnp.exp(-0.5 * (d / width) ** 2) + 0.6 * jnp.exp(-0.5 * ((jnp.abs(d) - width) / 1.5) ** 2)
        out = out + ((0.1 + 0.2 * s) if broad else (0.5 + s)) * band
    for i in range(_LOBES):
        a, r0, sg, s = (u[4 * _BANDS + 4 * i + j][:, None, None] for j in range(4))
        ang = a * 2 * math.pi
        dr, dc = rr - 0.25 * size * r0 * jnp.sin(ang), cc - 0.25 * size * r0 * jnp.cos(ang)
        # Diffuse (thermal, plasmon) scattering: broad, broader still with no beam.
        sigma = (0.3 * size + 0.3 * size * sg) if broad else (0.1 * size + 0.2 * size * sg)
        out = out + (0.5 + s) * 3.0 * jnp.exp(-0.5 * (dr**2 + dc**2) / sigma**2)
    return out / jnp.sum(out, axis=(1, 2), keepdims=True)


def before_warp(p: dict, clean: jax.Array, zero: jax.Array, config) -> jax.Array:
    """The clean patterns with their direct disk dimmed (``bragg``), before the warp."""
    if config.bragg_fraction == 0:
        return clean
    z = jnp.broadcast_to(jnp.asarray(zero, jnp.float32), (clean.shape[0], 2))
    radius = direct_disk_radius(clean, z)
    h, w = clean.shape[-2:]
    r = jnp.hypot(
        jnp.arange(h, dtype=jnp.float32)[None, :, None] - z[:, 0, None, None],
        jnp.arange(w, dtype=jnp.float32)[None, None, :] - z[:, 1, None, None],
    )
    inside = jnp.clip(radius[:, None, None] + 0.5 - r, 0.0, 1.0)  # 1 in the disk, a 1 px ramp at its edge
    factor = jnp.where(p["bragg"], p["bragg_attenuation"], 1.0)[:, None, None]
    return clean * (1.0 - (1.0 - factor) * inside)


def after_warp(p: dict, distorted: jax.Array, center: jax.Array, config) -> jax.Array:
    """The distorted patterns with the Kikuchi background about their beam centre, or
    (``no_beam``) that background alone, with the pattern's total intensity.

    Drawn in the output frame, not the clean one: the warp's rotation would cut the
    background at the rotated clean frame's corners."""
    if config.kikuchi_fraction == 0 and config.no_beam_fraction == 0:
        return distorted
    total = jnp.sum(distorted, axis=(1, 2), keepdims=True)
    if config.kikuchi_fraction > 0:
        bg = _background(p["background"], center, distorted.shape[-2:]) * total
        distorted = distorted + jnp.where(p["kikuchi"], p["kikuchi_strength"], 0.0)[:, None, None] * bg
    if config.no_beam_fraction > 0:
        bg = _background(p["background"], center, distorted.shape[-2:], broad=True) * total
        distorted = jnp.where(p["no_beam"][:, None, None], bg, distorted)
    return distorted


def after_noise(p: dict, noisy: jax.Array, target: jax.Array, config) -> tuple[jax.Array, jax.Array]:
    """The recorded counts with the detector's effects: saturation (target clipped too)
    and panel gaps (counts only)."""
    if config.saturation_fraction > 0:
        level = (p["saturation_level"] * jnp.max(target, axis=(1, 2)))[:, None, None]
        clip = p["saturation"][:, None, None]
        noisy = jnp.where(clip, jnp.minimum(noisy, level), noisy)
        target = jnp.where(clip, jnp.minimum(target, level), target)
    if config.gap_fraction > 0:
        h, w = noisy.shape[-2:]
        half = p["gap_width"][:, None, None] / 2
        rows = jnp.abs(jnp.arange(h, dtype=jnp.float32)[None, :, None] - ((h - 1) / 2 + p["gap_offset"][:, None, None])) < half
        cols = jnp.abs(jnp.arange(w, dtype=jnp.float32)[None, None, :] - ((w - 1) / 2 - p["gap_offset"][:, None, None])) < half
        noisy = jnp.where(p["gap"][:, None, None] & (rows | cols), 0.0, noisy)
    return noisy, target
