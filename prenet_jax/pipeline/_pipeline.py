"""The preprocessing pipeline's driver: denoise -> heatmap -> centre -> one composed warp.

The per-batch step is ONE ``jax.jit`` program, compiled once per (batch, frame)
shape, data-parallel over the local devices with ``NamedSharding``. Stages are
switched by the (static) configuration, inside the same function; the stage functions
themselves are in ``_stages.py`` (training runs the same ones).
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Callable, Iterator, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ..config import PipelineConfig
from ..conventions import FLAG_DESCAN, FLAG_EMPTY, FLAG_NEGATIVE, FLAG_NONFINITE, FLAG_REFINE, Ellipse
from ..ops import direct_beam_found, estimate_ellipse, fit_descan, refine_ellipse
from ..stages import networks_in
from ._result import PreprocessResult
from ._stages import (
    _classical_centers,
    _frame_seen,
    _frame_seen_sum,
    _moved_valid_sum,
    as_counts,
    center_stage,
    denoise_stage,
    ellipse_stage,
    frame_counts,
    frame_seen_sum,
    init_network_params,
    moved_valid_sum,
    refine_stage,
    refine_targets,
    warp_stage,
)
from ._validate import check_frames, check_mask, check_values_of, host_dtype

__all__ = ["Pipeline", "FLAG_NONFINITE", "FLAG_EMPTY", "FLAG_NEGATIVE", "FLAG_REFINE", "CALIBRATION_MIN_FRAMES"]

#: The fewest frames pass 0 samples when the dose would allow fewer: the mean pattern
#: then averages the descan and jitter over the whole scan, not over a few frames.
CALIBRATION_MIN_FRAMES = 256


#: Frames :meth:`Pipeline.center_noise` samples by default.
THINNING_FRAMES = 256


def scan_input(cube: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``(Rx, Ry, H, W)`` float32 counts for the scan denoiser: NaN/Inf and negatives set
    to 0 (as :func:`prenet_jax.pipeline.as_counts` does per batch), masked pixels
    (``mask`` True = bad) filled from their neighbours (:func:`prenet_jax.ops.fill_masked`)."""
    from ..ops import fill_masked

    x = np.nan_to_num(np.asarray(cube, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    np.maximum(x, 0.0, out=x)
    if mask is not None:
        valid = jnp.asarray(~np.asarray(mask), jnp.float32)
        rx, ry = x.shape[:2]
        flat = x.reshape(rx * ry, *x.shape[2:])
        for i in range(0, flat.shape[0], 64):
            flat[i : i + 64] = np.asarray(fill_masked(jnp.asarray(flat[i : i + 64]), valid))
    return x


class Pipeline:
    """4D-PreNet preprocessing: denoise, recentre and undo the elliptical distortion.

    Parameters
    ----------
    config : what to compute (:class:`PipelineConfig`)
    params : Flax variables of the networks the configured methods run, keyed as in
        :data:`prenet_jax.stages.NETWORKS`
    devices : devices to shard batches over; default every local device
    max_traces : if set, the batch step raises when traced more often
        (``chex.assert_max_traces``; chex counts per definition site, so call
        ``chex.clear_trace_counter()`` between pipelines)
    mask : (H, W) detector mask, True = bad pixel (dead, hot, a beam stop's shadow):
        the centre estimates leave masked pixels out with their mirror images, the
        ellipse fit the azimuths they hide, and the denoiser, the networks and the
        output see them filled from their neighbours. Frames padded on every side get
        the mask padded with good pixels. :meth:`with_mask` gives the same pipeline
        with another mask

    Attributes
    ----------
    step_fn : the compiled batch step ``(params, frames, matrix) -> (corrected, centers,
        flags)``: frames ``(batch_size, H, W)`` sharded by ``data_sharding``, the
        distortion matrix replicated (``replicated``); what streaming callers drive
    step_at_fn : the same step about given centres, ``(params, frames, centers, matrix)
        -> (corrected, centers, flags)`` with ``centers`` (batch_size, 2) sharded like the
        frames: denoise and warp, no centre stage (the second pass of a descan run)
    data_sharding, replicated : the ``NamedSharding`` of a batch (split over the
        ``"data"`` axis of ``mesh``) and of everything else
    batch_size : frames per step (a multiple of the devices)

    Examples
    --------
    >>> pipe = Pipeline.init(jax.random.key(0), PipelineConfig.classical())
    >>> res = pipe.preprocess(cube)          # (Rx, Ry, H, W) -> res.data, res.centers, res.ellipse
    """

    def __init__(
        self,
        config: PipelineConfig,
        params: dict | None = None,
        *,
        devices: Sequence[jax.Device] | None = None,
        max_traces: int | None = None,
        mask=None,
    ):
        self.config = config
        self.mask = check_mask(mask)
        params = {} if params is None else params
        missing = [k for k in networks_in(config) if k not in params]
        if missing:
            raise ValueError(
                f"config asks for the network method but params lack {missing}; use Pipeline.init or from_pretrained, or pick classical methods"
            )
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.data_sharding = NamedSharding(self.mesh, P("data"))
        self.replicated = NamedSharding(self.mesh, P())
        self.params = jax.device_put(params, self.replicated)
        n = len(self.devices)
        self.batch_size = -(-config.batch_size // n) * n  # a multiple of the device count
        step = self._step_fn
        if max_traces is not None:
            step = chex.assert_max_traces(step, n=max_traces)
        cfg = config
        self.step_fn = jax.jit(
            step,
            in_shardings=(self.replicated, self.data_sharding, self.replicated),
            out_shardings=(self.data_sharding, self.data_sharding, self.data_sharding),
        )
        self.step_at_fn = jax.jit(
            self._step_at_fn,
            in_shardings=(self.replicated, self.data_sharding, self.data_sharding, self.replicated),
            out_shardings=(self.data_sharding, self.data_sharding, self.data_sharding),
        )
        self._centers = jax.jit(
            lambda p, f: self._centers_fn(p, f),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.data_sharding, self.data_sharding),
        )
        self._estimate = jax.jit(
            lambda p, f: self._estimate_fn(p, f),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=self.data_sharding,
        )
        self._denoise = jax.jit(
            lambda p, f: self._denoise_fn(p, f),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=(self.data_sharding, self.data_sharding),
        )
        self._calib = jax.jit(
            lambda p, f, w, h: self._calib_fn(p, f, w, h),
            in_shardings=(self.replicated, self.data_sharding, self.data_sharding, self.data_sharding),
            out_shardings=self.replicated,
        )
        self._ellipse = jax.jit(lambda p, m, cov: ellipse_stage(cfg, p, m, cov))
        self._check = jax.jit(
            lambda p, f: self._check_fn(p, f),
            in_shardings=(self.replicated, self.data_sharding),
            out_shardings=self.data_sharding,
        )

    # ---- constructors
    @classmethod
    def init(cls, key: jax.Array, config: PipelineConfig | None = None, **kwargs) -> Pipeline:
        """An untrained pipeline: random network weights (classical stages need none)."""
        config = PipelineConfig() if config is None else config
        # The non-partitionable threefry: XLA:CPU compiles the initialisation of the
        # release networks 5-10x faster with it (the parameters are replicated anyway).
        with jax.threefry_partitionable(False):
            params = init_network_params(key, config)
        return cls(config, params, **kwargs)

    @classmethod
    def classical(cls, **overrides) -> Pipeline:
        """Classical methods at every stage (no weights): Gaussian filter, thresholded CoM, edge fit."""
        return cls(PipelineConfig.classical(**overrides))

    @classmethod
    def from_pretrained(cls, path=None, **kwargs) -> Pipeline:
        """The bundled trained weights (or those exported to ``path``)."""
        from ._weights import load_pretrained

        config, params = load_pretrained(path)
        return cls(config, params, **kwargs)

    # ---- pure per-batch functions (traced inside jit)
    def _valid_for(self, shape: tuple[int, int]) -> jax.Array | None:
        """The mask as ``valid`` (1 = good) for frames of ``shape``: the mask itself, or
        padded with valid pixels for frames padded on every side (``--pad``)."""
        if self.mask is None:
            return None
        mh, mw = self.mask.shape
        ph, pw = shape[0] - mh, shape[1] - mw
        if ph < 0 or ph != pw or ph % 2:
            raise ValueError(f"the mask is {mh}x{mw} px but the frames are {shape[0]}x{shape[1]}: give a mask of the frames' shape")
        return jnp.asarray(np.pad(~self.mask, ph // 2, constant_values=True), jnp.float32)

    def _denoised(self, params, frames):
        """as_counts and the denoise stage: ``(x, flags, valid, raw)``, ``raw`` the counts
        before denoising (which the centre stage's consensus reads)."""
        valid = self._valid_for(frames.shape[-2:])
        raw, flags = as_counts(frames, valid)
        return denoise_stage(self.config, params, raw, valid), flags, valid, raw

    def _located(self, params, frames):
        """Up to the centres: ``(denoised, centers, flags)``."""
        cfg = self.config
        x, flags, valid, raw = self._denoised(params, frames)
        centers, flags = refine_stage(cfg, x, center_stage(cfg, params, x, valid, raw), flags, valid)
        return x, centers, flags

    def _step_fn(self, params, frames, matrix):
        x, centers, flags = self._located(params, frames)
        # Always warp: with no centre method and an identity ellipse the map samples
        # integer positions, which both interpolations reproduce exactly.
        return warp_stage(self.config, x, centers, matrix), centers, flags

    def _step_at_fn(self, params, frames, centers, matrix):
        """The step about given centres (a descan model's): no centre stage."""
        x, flags, _, _ = self._denoised(params, frames)
        return warp_stage(self.config, x, centers, matrix), centers, flags

    def _centers_fn(self, params, frames):
        return self._located(params, frames)[1:]

    def _estimate_fn(self, params, frames):
        """The centres before their refinement (``center_refine``)."""
        x, _, valid, raw = self._denoised(params, frames)
        return center_stage(self.config, params, x, valid, raw)

    def _check_fn(self, params, frames):
        """The centre stage beside both classical estimators, and whether a beam is seen."""
        cfg = self.config
        x, _, valid, raw = self._denoised(params, frames)
        out = {"used": center_stage(cfg, params, x, valid, raw), "beam": jax.vmap(direct_beam_found)(raw)}
        for m in ("com", "friedel"):
            out[m] = out["used"] if cfg.center_method == m else _classical_centers(cfg, m, x, valid)
        return out

    def _denoise_fn(self, params, frames):
        x, flags, _, _ = self._denoised(params, frames)
        return x, flags

    def _calib_fn(self, params, frames, weights, half):
        cfg = self.config
        x, centers, flags = self._located(params, frames)
        out = warp_stage(cfg, x, centers, jnp.eye(2, dtype=jnp.float32))
        w = weights * ((flags & (FLAG_NONFINITE | FLAG_EMPTY)) == 0)  # negatives were clipped: keep the frame
        valid = self._valid_for(out.shape[-2:])
        cover = (
            frame_seen_sum(centers, w, out.shape[-2:])
            if valid is None
            else moved_valid_sum(cfg.interpolation, valid, centers, w, jnp.eye(2, dtype=jnp.float32))
        )
        hi = jax.lax.Precision.HIGHEST
        # the sum over one half of the frames too (``half`` 1): the split-half check of
        # the ellipse (preprocess_file) fits both halves' means without a second pass
        wh = w * half
        return jnp.einsum("b,bhw->hw", w, out, precision=hi), w.sum(), cover, jnp.einsum("b,bhw->hw", wh, out, precision=hi), wh.sum()

    def coverage(self, centers, shape: tuple[int, int], matrix=None, weights=None) -> np.ndarray | None:
        """The fraction of frames in which each pixel of their corrected mean was seen:
        the mask (or, without one, the frame itself) moved with every frame (warped about
        its centre, undoing ``matrix``).

        Parameters
        ----------
        centers : (N, 2) the frames' centres, in frames of ``shape``
        shape : the frames' ``(H, W)`` (padded frames: the padded shape)
        matrix : (2, 2) the distortion undone (default: none)
        weights : (N,) weight of each frame (default: 1)

        Returns
        -------
        (H, W) float32 in [0, 1]: 0 where no frame saw the pixel (masked, or beyond the
        frame's edge once recentred). Without a mask only 0 or 1: seen where at least
        :data:`FRAME_SEEN_SHARE` of the frames held the pixel.
        """
        shape = tuple(shape)
        valid = self._valid_for(shape)
        centers = np.asarray(centers, np.float32).reshape(-1, 2)
        weights = np.ones(len(centers), np.float32) if weights is None else np.asarray(weights, np.float32)
        if valid is None and matrix is None:
            total = _frame_seen_sum(jnp.asarray(centers), jnp.asarray(weights), shape)
            return _frame_seen(total / max(float(weights.sum()), 1e-12))
        masked = valid is not None
        valid = jnp.ones(shape, jnp.float32) if valid is None else valid
        m = jnp.eye(2, dtype=jnp.float32) if matrix is None else jnp.asarray(matrix, jnp.float32)
        total = jnp.zeros(valid.shape, jnp.float32)
        b = self.batch_size
        for i in range(0, len(centers), b):  # the moved masks of one batch at a time
            c, w = np.zeros((b, 2), np.float32), np.zeros(b, np.float32)
            c[: len(centers[i : i + b])], w[: len(centers[i : i + b])] = centers[i : i + b], weights[i : i + b]
            total = total + _moved_valid_sum(self.config.interpolation, valid, jnp.asarray(c), jnp.asarray(w), m)
        share = np.asarray(total / max(float(weights.sum()), 1e-12))
        return share if masked else _frame_seen(share)

    # ---- batching
    def _batches(self, frames, check: bool, index: np.ndarray | None = None) -> Iterator[tuple[int, int, jax.Array]]:
        """Yield ``(start, count, device batch)``, the last batch zero-padded to full size.

        ``index`` (sorted) selects frames; only one batch is ever read into host memory.
        """
        b = self.batch_size
        dt = host_dtype(frames.dtype)
        total = frames.shape[0] if index is None else index.size
        for start in range(0, total, b):
            host = np.asarray(frames[start : start + b] if index is None else frames[index[start : start + b]])
            if check:
                check_values_of(host, "frames", self.config.negative)
            host = host.astype(dt, copy=False)
            n = host.shape[0]
            if n < b:
                host = np.concatenate([host, np.zeros((b - n,) + host.shape[1:], host.dtype)])
            yield start, n, jax.device_put(host, self.data_sharding)

    def _map(self, fn: Callable, frames: np.ndarray, outs: Sequence[np.ndarray], *args, check: bool = True, progress=None) -> None:
        """Run ``fn(params, batch, *args)`` over ``frames``, writing results into ``outs``.

        Two batches are in flight: the next one is dispatched before the previous
        one's results are copied back, so transfers overlap compute.
        """
        pending: collections.deque = collections.deque()

        def drain():
            start, n, res = pending.popleft()
            for o, r in zip(outs, res):
                o[start : start + n] = np.asarray(r)[:n]
            if progress is not None:
                progress(n)

        for start, n, batch in self._batches(frames, check):
            pending.append((start, n, fn(self.params, batch, *args)))
            if len(pending) > 1:
                drain()
        while pending:
            drain()

    # ---- public API
    def denoise(self, frames) -> np.ndarray:
        """Denoise frames.

        Parameters
        ----------
        frames : (N, H, W) any real dtype, counts >= 0

        Returns
        -------
        (N, H, W) float32 in the same intensity units as the input
        """
        if self.config.denoise_method == "scan":
            raise ValueError(
                "denoise_method 'scan' denoises a frame with its scan neighbours: use denoise_scan(cube) with the "
                "(Rx, Ry, H, W) scan, or denoise_method 'gaussian' for frames without a scan"
            )
        frames = check_frames(frames, 3, "frames", negative=self.config.negative, check_values=False)
        out = np.empty(frames.shape, np.float32)
        flags = np.empty(frames.shape[0], np.uint8)
        self._map(self._denoise, frames, (out, flags))
        return out

    def denoise_scan(self, cube, progress: bool = False, details: bool = False):
        """Denoise a scan with each frame's aligned scan neighbours
        (:func:`prenet_jax.pipeline.scan_gaussian`: the window and the blur chosen per
        frame by its Poisson risk, the frame-by-frame Gaussian and the raw frame among
        the choices).

        Parameters
        ----------
        cube : (Rx, Ry, H, W) counts, any real dtype (not modified); NaN/Inf and
            negative values count as 0 (as in :meth:`denoise`), masked pixels
            (:meth:`with_mask`) are filled from their neighbours first
        progress : show a progress bar over the scan rows
        details : also return the :class:`prenet_jax.pipeline.ScanDenoised` (each
            frame's window, blur, estimated risk and alignment)

        Returns
        -------
        (Rx, Ry, H, W) float32 in the input's units; with ``details``, ``(array, ScanDenoised)``
        """
        from ._scan import scan_gaussian

        cube = check_frames(cube, 4, "cube", negative=self.config.negative, check_values=False)
        x = scan_input(cube, self.mask)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=x.shape[0], unit="row", desc="denoise (scan)")
        try:
            res = scan_gaussian(x, progress=(lambda done, total: bar.update(done - bar.n)) if bar else None)
        finally:
            if bar:
                bar.close()
        return (res.frames, res) if details else res.frames

    def find_centers(self, frames) -> np.ndarray:
        """Beam centre of every frame.

        Parameters
        ----------
        frames : (N, H, W) raw frames, any real dtype

        Returns
        -------
        (N, 2) float64 ``(row, col)`` in the input frames' pixel coordinates
        """
        frames = check_frames(frames, 3, "frames", negative=self.config.negative, check_values=False)
        centers = np.empty((frames.shape[0], 2), np.float32)
        flags = np.empty(frames.shape[0], np.uint8)
        self._map(self._centers, frames, (centers, flags))
        return centers.astype(np.float64)

    def check_centers(self, frames) -> dict[str, np.ndarray]:
        """The centre stage's estimates beside both classical ones, on the same frames.

        Parameters
        ----------
        frames : (N, H, W) raw frames, any real dtype (a sample of a scan)

        Returns
        -------
        dict of ``used`` (N, 2), the centres of the configured stage (consensus
        included, refinement not); ``com`` and ``friedel`` (N, 2), the classical
        estimates of the same denoised frames; ``beam`` (N,) bool, whether each frame
        shows a direct beam (:func:`prenet_jax.ops.direct_beam_found`)
        """
        frames = check_frames(frames, 3, "frames", negative=self.config.negative, check_values=False)
        n = frames.shape[0]
        outs = {k: np.empty((n, 2), np.float32) for k in ("used", "com", "friedel")}
        outs["beam"] = np.empty(n, bool)
        keys = tuple(outs)
        self._map(lambda p, f: tuple(self._check(p, f)[k] for k in keys), frames, tuple(outs[k] for k in keys))
        return {k: (v.astype(np.float64) if v.dtype != bool else v) for k, v in outs.items()}

    def center_noise(self, frames, valid=None, counts=None, n: int = THINNING_FRAMES, seed: int = 0) -> np.ndarray | None:
        """The noise of this pipeline's centre estimate in every frame, by Poisson thinning.

        Each of ``n`` frames sampled evenly over ``frames`` is split into two halves by
        drawing every count into one or the other (binomial, p = 1/2): each half is an
        independent Poisson frame of half the dose. Their centres differ by the
        estimator's noise at half the dose, so per axis ``std(c1 - c2) / 2`` is its noise
        at the full dose (``c1 - c2`` has variance ``2 * 2 sigma^2``). The noise of a centre
        of mass scales as ``1 / sqrt(counts)``: the sample gives ``k = std(sqrt(N) (c1 -
        c2) / 2)`` (robust: 1.4826 MAD) and frame ``i`` gets ``k / sqrt(N_i)``.

        Parameters
        ----------
        frames : (N, H, W) counts (an array, or a lazy array-like taking sorted index arrays)
        valid : (N,) bool, the frames that may be sampled (default: all)
        counts : (N,) total counts of each frame (default: summed here, which reads every frame)
        n, seed : frames sampled, and the seed of the split (the result is reproducible)

        Returns
        -------
        (N, 2) float64 px, or None where thinning cannot tell: the data are not counts
        (a sampled pixel is not a whole number), or fewer than 8 frames have counts
        """
        if counts is None:
            counts = np.concatenate([np.zeros(0)] + [frame_counts(frames[i : i + 256]) for i in range(0, len(frames), 256)])
        counts = np.asarray(counts, np.float64).reshape(-1)
        ok = counts > 0 if valid is None else np.asarray(valid, bool).reshape(-1) & (counts > 0)
        flat = np.flatnonzero(ok)
        if flat.size < 8:
            return None
        index = np.unique(flat[np.linspace(0, flat.size - 1, min(n, flat.size)).round().astype(np.int64)])
        rng = np.random.default_rng(seed)
        c1, c2 = [], []
        for i in range(0, index.size, self.batch_size):  # one batch of frames in memory at a time
            x = np.asarray(frames[index[i : i + self.batch_size]], np.float32)
            x = np.where(np.isfinite(x) & (x > 0), x, 0.0)
            k = np.round(x)
            if np.abs(x - k).max() > 1e-3:
                return None
            half = rng.binomial(k.astype(np.int64), 0.5).astype(np.float32)
            c1.append(self.find_centers(half))
            c2.append(self.find_centers(k - half))
        d = np.sqrt(counts[index])[:, None] * (np.concatenate(c1) - np.concatenate(c2)) / 2.0
        d = d[np.isfinite(d).all(-1)]
        if d.shape[0] < 8:
            return None
        scale = np.maximum(1.482602218505602 * np.median(np.abs(d - np.median(d, 0)), 0), 1e-9)
        return scale / np.sqrt(np.maximum(counts, 1.0))[:, None]

    def estimate_ellipse(self, mean_dp, coverage=None) -> Ellipse:
        """Elliptical distortion of a recentred mean pattern.

        Parameters
        ----------
        mean_dp : (H, W) mean diffraction pattern with the beam centre at ((H-1)/2, (W-1)/2)
        coverage : (H, W) fraction of the averaged frames in which each pixel was seen
            (a masked detector's): the edge fit leaves out the azimuths it does not see

        Returns
        -------
        Ellipse with ``ratio >= 1`` and ``angle`` in ``[0, pi)``; the identity when the
        ellipse method is ``"none"``
        """
        mean_dp = check_frames(mean_dp, 2, "mean_dp", negative=self.config.negative)
        if self.config.ellipse_method == "none":
            return Ellipse.identity()
        cov = None if coverage is None else jnp.asarray(np.asarray(coverage), jnp.float32)
        if self.config.ellipse_method == "fit":
            # several classical estimators, the most self-consistent chosen; a refusal only
            # where none of them sees a ring (prenet_jax.ops.estimate_ellipse)
            est = estimate_ellipse(np.asarray(mean_dp, np.float32), None if cov is None else np.asarray(cov))
            if est.ellipse is None:
                raise ValueError(
                    "could not fit an ellipse to mean_dp: nothing in it is a ring, and what edges it has are not an ellipse "
                    f"of axis ratio up to 2 (a stripe, or frames recentred on wrong centres?); seen: {est.reason}; pass a fixed "
                    "ellipse instead"
                )
            return est.ellipse
        ratio, angle, ok = (float(v) for v in self._ellipse(self.params, jnp.asarray(np.asarray(mean_dp), jnp.float32), cov))
        if not ok or not np.isfinite(ratio) or ratio <= 0:
            raise ValueError(
                "could not fit an ellipse to mean_dp: the ellipse network gave no finite axis ratio; pass a fixed ellipse instead"
            )
        return Ellipse(ratio, angle)

    def calibration_size(self, frames) -> int:
        """How many frames pass 0 samples from ``frames`` (N, H, W): enough for
        ``config.calibration_counts`` counts at the dose of 16 frames read across the
        scan, at least ``CALIBRATION_MIN_FRAMES`` and at most ``config.calibration_frames``.

        Why: the ellipse's error falls with the counts averaged, and with the frames
        (their centre errors average out), until the fit's own bias dominates. Measured
        on 256 px synthetic frames (ratio 1.08, jitter 0.8 px), worst of two disjoint
        samples: at 1e5 counts a frame, 256 frames give the ratio to 0.0003 and the angle
        to 0.09 degrees, 1024 no better; at 1e4, 1024 frames give 0.0005 and 0.10
        degrees (256: 0.0004 and 0.45); at 1e3, 512 frames still err by 0.0025. So
        sampling 4096 frames of a high-dose scan is work without gain. Frames that are
        not counts (non-integer values) have no known dose: ``calibration_frames``."""
        cfg = self.config
        n_all = frames.shape[0]
        cap = min(n_all, cfg.calibration_frames)
        if not cfg.calibration_counts:
            return cap
        probe = np.asarray(frames[np.unique(np.linspace(0, n_all - 1, min(n_all, 16)).round().astype(np.int64))], np.float64)
        probe = np.maximum(np.where(np.isfinite(probe), probe, 0.0), 0.0)
        per_frame = probe.sum(axis=(-2, -1)).mean()
        if per_frame <= 0 or not np.array_equal(probe, np.round(probe)):
            return cap
        return int(min(cap, max(CALIBRATION_MIN_FRAMES, math.ceil(cfg.calibration_counts / per_frame))))

    def calibrate(self, frames, n: int | None = None, halves: bool = False):
        """Pass 0: recentre ``n`` frames sampled evenly across ``frames`` (default
        :meth:`calibration_size`), average them, and estimate the ellipse. Returns
        ``(ellipse, mean_pattern)``; with ``halves``, ``(ellipse, mean_pattern,
        (mean_a, mean_b, coverage))``: the means of the even- and odd-numbered sampled
        frames, two disjoint halves spread alike over the scan (NaN where a half has no
        usable frame), and the whole mean's coverage (:meth:`coverage`)."""
        frames = check_frames(frames, 3, "frames", negative=self.config.negative, check_values=False)
        n = min(frames.shape[0], n or self.calibration_size(frames))
        idx = np.unique(np.linspace(0, frames.shape[0] - 1, n).round().astype(np.int64))
        total = total_a = jnp.zeros(frames.shape[-2:], jnp.float32)
        count = cover = count_a = jnp.zeros((), jnp.float32)
        b = self.batch_size
        for start, nb, batch in self._batches(frames, True, idx):
            w = jax.device_put((np.arange(b) < nb).astype(np.float32), self.data_sharding)
            h = jax.device_put(((start + np.arange(b)) % 2 == 0).astype(np.float32), self.data_sharding)
            s, c, v, sa, ca = self._calib(self.params, batch, w, h)
            total, count, cover, total_a, count_a = total + s, count + c, cover + v, total_a + sa, count_a + ca
        if float(count) == 0:
            raise ValueError("no usable frame for the ellipse estimate: every sampled frame is empty or non-finite")
        mean = np.asarray(total / count)
        coverage = np.asarray(cover / count) if self.mask is not None else _frame_seen(cover / count)
        ellipse = self.estimate_ellipse(mean, coverage)
        if not halves:
            return ellipse, mean
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_a = np.asarray(total_a) / float(count_a)
            mean_b = (np.asarray(total) - np.asarray(total_a)) / float(count - count_a)
        return ellipse, mean, (mean_a, mean_b, coverage)

    def with_refinement(self) -> Pipeline:
        """This pipeline with ``center_refine="friedel"`` (the same parameters and devices;
        its own compiled step, made once)."""
        if self.config.center_refine != "none":
            return self
        if getattr(self, "_refined", None) is None:
            self._refined = Pipeline(self.config.replace(center_refine="friedel"), self.params, devices=self.devices, mask=self.mask)
        return self._refined

    def with_mask(self, mask) -> Pipeline:
        """This pipeline with a detector mask ((H, W) bool, True = bad; None: none): the
        same configuration, parameters and devices, its own compiled step (made once per
        mask, and this pipeline itself when the mask is its own)."""
        mask = check_mask(mask)
        key = None if mask is None else (mask.shape, hashlib.sha1(np.packbits(mask)).hexdigest())
        if key == (None if self.mask is None else (self.mask.shape, hashlib.sha1(np.packbits(self.mask)).hexdigest())):
            return self
        cache = self.__dict__.setdefault("_masked", {})  # files of one detector share a mask: one compile
        if key not in cache:
            cache[key] = Pipeline(self.config, self.params, devices=self.devices, mask=mask)
        return cache[key]

    def refine_ellipse(self, mean_pattern, ellipse: Ellipse, **kwargs):
        """:func:`prenet_jax.ops.refine_ellipse` of a recentred mean pattern from ``ellipse``
        (returns a :class:`prenet_jax.ops.RefinedEllipse`)."""
        mean_pattern = check_frames(mean_pattern, 2, "mean_pattern", negative=self.config.negative)
        return refine_ellipse(np.asarray(mean_pattern, np.float32), ellipse, **kwargs)

    def preprocess(
        self, cube, ellipse: Ellipse | None = None, progress: bool = False, refine: bool | str = False, descan: str | None = None
    ) -> PreprocessResult:
        """Denoise, recentre and undo the ellipse of a whole 4D-STEM cube.

        Parameters
        ----------
        cube : (Rx, Ry, H, W) any real dtype
        ellipse : a known distortion; default: estimated in pass 0 from
            :meth:`calibration_size` frames sampled across the scan
        progress : show a progress bar
        refine : self-calibration: refine every centre by Friedel symmetry and the
            estimated ellipse by the azimuthal variance of the corrected mean pattern,
            both through the warp (``result.refinement`` has the values before and after);
            ``"centers"`` or ``"ellipse"`` refines one of them (:func:`refine_targets`)
        descan : None: every frame is warped about its own centre (one pass). A mode of
            :func:`prenet_jax.ops.fit_descan` (``"auto"``, ``"plane"``, ``"quadratic"``,
            ``"frame"``): the centres of all frames are found first, the descan model is
            fitted over the scan (frames flagged ``FLAG_NONFINITE`` or ``FLAG_EMPTY`` left
            out, and given the model's centre), and every frame is warped about its chosen
            centre; ``result.descan`` holds the fit, and its outliers are flagged
            ``FLAG_DESCAN``. ``"auto"`` judges each frame's residual against the
            estimator's noise measured by :meth:`center_noise` (Poisson thinning; for
            data that are not counts, the fit's own estimate). The frames are denoised
            once: they wait, denoised, in the output array between the two passes.

        Returns
        -------
        :class:`PreprocessResult` with ``data`` (Rx, Ry, H, W) float32,
        ``centers`` (Rx, Ry, 2) float64, ``ellipse``, ``flags`` (Rx, Ry)
        """
        if descan not in (None, "auto", "frame", "plane", "quadratic"):  # before the long first pass
            raise ValueError(f"descan must be None, 'auto', 'frame', 'plane' or 'quadratic', got {descan!r}")
        targets = refine_targets(refine)
        if "centers" in targets and self.config.center_refine == "none":
            return self.with_refinement().preprocess(cube, ellipse, progress, refine=refine, descan=descan)
        cube = check_frames(cube, 4, "cube", negative=self.config.negative, check_values=False)
        rx, ry, h, w = cube.shape
        scan_denoised = None
        if self.config.denoise_method == "scan":  # the step leaves the frames as they are
            cube, scan_denoised = self.denoise_scan(cube, progress=progress, details=True)
        frames = cube.reshape(rx * ry, h, w)
        mean, refinement = None, None
        if ellipse is None:
            ellipse, mean = (Ellipse.identity(), None) if self.config.ellipse_method == "none" else self.calibrate(frames)
            if "ellipse" in targets and mean is not None:
                ref = self.refine_ellipse(mean, ellipse)
                refinement = {
                    "ellipse_before": ellipse,
                    "ellipse_after": ref.ellipse,
                    "variance_before": ref.variance_before,
                    "variance_after": ref.variance_after,
                    "ellipse_ok": ref.ok,
                }
                ellipse = ref.ellipse
        matrix = jax.device_put(jnp.asarray(ellipse.matrix(), jnp.float32), self.replicated)
        data = np.empty((rx * ry, h, w), np.float32)
        centers = np.empty((rx * ry, 2), np.float32)
        flags = np.empty(rx * ry, np.uint8)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=rx * ry, unit="frame", desc="preprocess")
        fit = None
        try:
            if descan is None:
                self._map(self.step_fn, frames, (data, centers, flags), matrix, progress=bar.update if bar else None)
            else:
                fit = self._descan_passes(frames, data, centers, flags, matrix, descan, (rx, ry), bar.update if bar else None)
        finally:
            if bar:
                bar.close()
        if "centers" in targets:
            refinement = {**(refinement or {}), "centers_failed": int(((flags & FLAG_REFINE) != 0).sum())}
        return PreprocessResult(
            data=data.reshape(rx, ry, h, w),
            centers=centers.astype(np.float64).reshape(rx, ry, 2) if fit is None else fit.centers,
            ellipse=ellipse,
            flags=flags.reshape(rx, ry),
            mean_pattern=mean,
            refinement=refinement,
            descan=fit,
            scan_denoised=scan_denoised,
        )

    def _descan_passes(self, frames, data, centers, flags, matrix, mode: str, scan: tuple[int, int], progress):
        """``preprocess(descan=mode)``: pass 1 denoises and finds every centre (the denoised
        frames go to ``data``), the descan is fitted on the host, pass 2 warps ``data`` in
        place about the chosen centres. Returns the :class:`prenet_jax.ops.Descan`."""
        if getattr(self, "_descan_fns", None) is None:
            cfg, ds = self.config, self.data_sharding
            self._descan_fns = (
                jax.jit(self._located, in_shardings=(self.replicated, ds), out_shardings=(ds, ds, ds)),
                jax.jit(lambda x, c, m: warp_stage(cfg, x, c, m), in_shardings=(ds, ds, self.replicated), out_shardings=ds),
            )
        first, warp = self._descan_fns
        self._map(first, frames, (data, centers, flags), progress=progress)
        usable = (flags & (FLAG_NONFINITE | FLAG_EMPTY)) == 0
        noise = self.center_noise(frames, valid=usable)  # each frame's uncertainty weights the fit (every mode)
        noise = None if noise is None else noise.reshape(*scan, 2)
        fit = fit_descan(centers.astype(np.float64).reshape(*scan, 2), mode, valid=usable.reshape(scan), center_noise=noise)
        flags |= np.where(fit.outliers.reshape(-1), FLAG_DESCAN, 0).astype(np.uint8)
        chosen = fit.centers.reshape(-1, 2).astype(np.float32)
        b = self.batch_size
        for start in range(0, data.shape[0], b):
            n = min(b, data.shape[0] - start)
            x = np.zeros((b,) + data.shape[1:], np.float32)
            c = np.zeros((b, 2), np.float32)
            x[:n], c[:n] = data[start : start + n], chosen[start : start + n]
            data[start : start + n] = np.asarray(
                warp(jax.device_put(x, self.data_sharding), jax.device_put(c, self.data_sharding), matrix)
            )[:n]
        return fit

    def step(self, frames: jax.Array, ellipse: Ellipse | None = None):
        """The compiled batch step on one ``(B, H, W)`` device or host batch
        (``B`` = ``self.batch_size``): returns ``(corrected, centers, flags)`` as jax arrays."""
        m = jnp.asarray((ellipse or Ellipse.identity()).matrix(), jnp.float32)
        return self.step_fn(self.params, jax.device_put(frames, self.data_sharding), jax.device_put(m, self.replicated))
