"""Training data: abTEM multislice simulation of clean 4D-STEM diffraction patterns.

What a pattern is
-----------------
One convergent-beam diffraction pattern ``|FFT(exit wave)|^2`` of a probe at one scan
position, computed with abTEM 1.0.11 (multislice, Lobato potentials, infinite
projection), clean (no noise), undistorted and centred: the zero angle (the optical
axis, where the unscattered beam goes) sits at pixel ``(S/2, S/2)`` of an ``S x S``
pattern, ``(128, 128)`` for 256 x 256. That is half a pixel from the geometric centre
``(127.5, 127.5)`` that the pipeline aligns frames to; the stored label is the zero-angle
position itself (``zero_angle``), never a centre of mass (dynamical scattering makes the
direct disk asymmetric, so its centre of mass can sit pixels away; ``disk_com`` records
it for comparison). Intensities are the fraction of the incident electrons that land in
each pixel (the whole frame sums to slightly less than 1: what scatters beyond the frame
is lost). Axes are ``(row, col) = (ky, kx)``.

Sampling (per task; one task = one potential, several patterns)
---------------------------------------------------------------
- structure: cycled through the selected structures (``_structures.select_structures``);
- accelerating voltage from ``energies_kv``; disk radius ``r`` (pixels) log-uniform,
  cell side ``L`` log-uniform, accepted when the convergence semi-angle
  ``alpha = r * lambda / L`` is inside ``semiangle_mrad``: nano-beam with separated disks
  at small alpha, overlapping CBED disks at large alpha. The reciprocal pixel is ``1/L``
  and the angular pixel ``lambda / L``;
- orientation: a low-index zone axis with a small mistilt and any in-plane rotation, or
  a uniformly random orientation (crystals; amorphous boxes are isotropic);
- thickness: ``thicknesses_per_task`` exit planes of one multislice run;
- ``positions_per_task`` probe positions near the cell centre (far from the lateral seam);
- defocus (abTEM convention, ``defocus = -C10``) and optional frozen phonons.

Files
-----
``<output>/run.json`` (the configuration and the structure list, written first),
``<output>/patterns/shard-NNNNN.h5`` and ``<output>/ellipse/shard-NNNNN.h5``
(``patterns`` (N, S, S) float32 chunked one pattern per chunk, gzip + shuffle; ``meta/*``
one entry per pattern), ``<output>/manifest.csv`` (one row per pattern: shard, index,
structure, split, physics) and ``<output>/structures.csv``. Every file is written to a
temporary name and renamed, so it is whole or absent. The content of shard ``k`` is a
pure function of (configuration, ``k``): an interrupted run resumes by computing the
missing shards, with nothing duplicated or lost, on any number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .._util import atomic_path, atomic_write_text, min_max, versions
from . import _structures as structures_mod

__all__ = [
    "SimulationConfig",
    "wavelength",
    "TaskSpec",
    "draw_task",
    "simulate_task",
    "simulate_shard",
    "simulate_ellipse_sample",
    "write_shard",
    "round_mantissa",
    "read_shard",
    "run_simulation",
    "read_manifest",
    "PatternStore",
]

FORMAT = "prenet-jax-simulation"
FORMAT_VERSION = 1
PATTERNS, ELLIPSE = "patterns", "ellipse"
_STREAM = {PATTERNS: 0, ELLIPSE: 1}


# --------------------------------------------------------------------------------------
# physics helpers
# --------------------------------------------------------------------------------------


def wavelength(energy_ev: float) -> float:
    """Relativistic electron wavelength in Angstrom for an accelerating voltage in eV.

    ``lambda = h c / sqrt(E (E + 2 m c^2))``; 0.02508 A at 200 kV, 0.01969 A at 300 kV.
    """
    hc = 12398.419843320026  # eV * Angstrom
    mc2 = 510998.95000  # eV
    return hc / math.sqrt(energy_ev * (energy_ev + 2.0 * mc2))


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    """Everything that decides the content of a simulated data set.

    Attributes
    ----------
    n_structures : int
        Distinct structures (about ``amorphous_fraction`` of them amorphous).
    n_patterns : int
        Patterns in the main data set; rounded up to a whole number of tasks.
    seed : int
        Seeds the structure choice and every task (task ``i`` draws from
        ``SeedSequence([seed, stream, i])``, independent of workers and shards).
    amorphous_fraction : float
    structure_ids : tuple of str or None
        Use exactly these structures instead of drawing ``n_structures``.
    pattern_size : int
        ``S``: patterns are ``S x S``; the zero angle is at ``(S/2, S/2)``.
    gpts : int
        Real-space grid of the multislice. abTEM's anti-aliasing cutoff is a circle of
        radius ``gpts / 3`` pixels around the zero angle, with nothing outside it. The
        default 720 (radius 240 px) fills the whole 256 x 256 frame even after the largest
        default augmentation (shift 16 px, ellipse 1.2 needs 224 px), so no artificial
        edge centred on the label is left for a network to find. 384 (radius 128 px,
        ``S <= 2/3 gpts`` is the minimum) is ~2.5x faster but leaves the corners empty
        behind a sharp circular edge around the zero angle.
    energies_kv : tuple of float
        Accelerating voltages drawn uniformly.
    disk_radius_px, extent_a, semiangle_mrad : (min, max)
        Direct-disk radius in pixels (log-uniform), cell side ``L`` in Angstrom
        (log-uniform) and the accepted convergence semi-angle range in mrad.
    thickness_a : (min, max)
        Specimen thickness in Angstrom (uniform per exit plane).
    thicknesses_per_task, positions_per_task : int
        Patterns per task = their product (one multislice run gives all of them).
    zone_axis_fraction : float
        Fraction of crystal tasks at a low-index zone axis (the rest random).
    mistilt_deg : float
        Zone-axis tasks are tilted off the axis by up to this much.
    defocus_a : (min, max)
        Probe defocus in Angstrom (abTEM convention, ``defocus = -C10``).
    slice_thickness_a : float
    frozen_phonons : int
        Configurations averaged per pattern (0: a static lattice).
    phonon_sigma_a : float
        RMS thermal displacement per direction for frozen phonons.
    position_jitter_a : float
        Probe positions lie within this half-width of the cell centre.
    split_fractions : (train, val, test)
        Split by structure id hash (:func:`prenet_jax.data._structures.split_of`).
    tasks_per_shard : int
    ellipse_samples : int
        Averaged patterns in the ellipse data set (0: none).
    ellipse_orientations, ellipse_rotations : int
        Orientations (potentials) and in-plane rotations averaged per ellipse sample.
    ellipse_thickness_a : (min, max)
    ellipse_per_shard : int
    mantissa_bits : int
        float32 mantissa bits kept in the shards (23: lossless). The default 12 keeps a
        relative precision of 1.2e-4, far below the shot noise of any realistic dose (1 %
        at 10^4 electrons in a pixel), and halves the files (float32 diffraction data
        barely compresses: 1.2x lossless, 2.0x at 12 bits, gzip + shuffle).
    """

    n_structures: int = 1024
    n_patterns: int = 100_000
    seed: int = 0
    amorphous_fraction: float = 0.1
    structure_ids: tuple[str, ...] | None = None
    pattern_size: int = 256
    gpts: int = 720
    energies_kv: tuple[float, ...] = (60.0, 80.0, 120.0, 200.0, 300.0)
    disk_radius_px: tuple[float, float] = (3.0, 40.0)
    extent_a: tuple[float, float] = (25.0, 150.0)
    semiangle_mrad: tuple[float, float] = (0.5, 30.0)
    thickness_a: tuple[float, float] = (20.0, 300.0)
    thicknesses_per_task: int = 2
    positions_per_task: int = 2
    zone_axis_fraction: float = 0.5
    mistilt_deg: float = 1.0
    defocus_a: tuple[float, float] = (-50.0, 50.0)
    slice_thickness_a: float = 2.0
    frozen_phonons: int = 0
    phonon_sigma_a: float = 0.08
    position_jitter_a: float = 3.0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    tasks_per_shard: int = 16
    ellipse_samples: int = 0
    ellipse_orientations: int = 16
    ellipse_rotations: int = 32
    ellipse_thickness_a: tuple[float, float] = (20.0, 150.0)
    ellipse_per_shard: int = 4
    mantissa_bits: int = 12

    def __post_init__(self):
        for name in (
            "n_structures",
            "n_patterns",
            "tasks_per_shard",
            "thicknesses_per_task",
            "positions_per_task",
            "ellipse_orientations",
            "ellipse_rotations",
            "ellipse_per_shard",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ellipse_samples < 0 or self.frozen_phonons < 0:
            raise ValueError("ellipse_samples and frozen_phonons must be >= 0")
        s, g = int(self.pattern_size), int(self.gpts)
        if s % 2 or s < 8:
            raise ValueError(f"pattern_size must be even and >= 8, got {s}")
        if s > (2 * g) // 3:
            raise ValueError(
                f"pattern_size {s} exceeds the anti-aliasing cutoff of gpts={g} ({(2 * g) // 3} px): use gpts >= {math.ceil(1.5 * s)}"
            )
        for name in ("disk_radius_px", "extent_a", "semiangle_mrad", "thickness_a", "ellipse_thickness_a"):
            object.__setattr__(self, name, min_max(getattr(self, name), name, lowest=1e-30))
        object.__setattr__(self, "defocus_a", min_max(self.defocus_a, "defocus_a", lowest=None))
        object.__setattr__(self, "energies_kv", tuple(float(e) for e in self.energies_kv))
        if not self.energies_kv or min(self.energies_kv) <= 0:
            raise ValueError(f"energies_kv must be positive voltages in kV, got {self.energies_kv}")
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        structures_mod.split_of("check", self.split_fractions)  # validates the fractions
        if self.structure_ids is not None:
            object.__setattr__(self, "structure_ids", tuple(str(s) for s in self.structure_ids))
            if not self.structure_ids:
                raise ValueError("structure_ids must not be empty (use None to draw n_structures)")
        if not 0 <= self.zone_axis_fraction <= 1:
            raise ValueError(f"zone_axis_fraction must be in [0, 1], got {self.zone_axis_fraction}")
        if not 1 <= int(self.mantissa_bits) <= 23:
            raise ValueError(f"mantissa_bits must be in 1..23 (23 is lossless float32), got {self.mantissa_bits}")
        if self.slice_thickness_a <= 0:
            raise ValueError(f"slice_thickness_a must be positive, got {self.slice_thickness_a}")

    @property
    def cutoff_radius_px(self) -> float:
        """Radius of abTEM's anti-aliasing cutoff around the zero angle, in pattern pixels."""
        return self.gpts / 3.0

    def frame_filled(self, max_shift: float = 16.0, max_ratio: float = 1.2) -> bool:
        """Whether the cutoff circle still covers the whole frame after an augmentation
        shifting by up to ``max_shift`` px per axis and stretching by ``max_ratio``."""
        half = self.pattern_size / 2
        corner = math.hypot(half + max_shift, half + max_shift)
        return self.cutoff_radius_px / math.sqrt(max_ratio) >= corner

    @property
    def patterns_per_task(self) -> int:
        return self.thicknesses_per_task * self.positions_per_task

    @property
    def n_tasks(self) -> int:
        return -(-self.n_patterns // self.patterns_per_task)

    def n_shards(self, dataset: str) -> int:
        if dataset == PATTERNS:
            return -(-self.n_tasks // self.tasks_per_shard)
        return -(-self.ellipse_samples // self.ellipse_per_shard)

    def shard_tasks(self, dataset: str, shard: int) -> range:
        """Task (or ellipse-sample) indices held by one shard."""
        per, total = (self.tasks_per_shard, self.n_tasks) if dataset == PATTERNS else (self.ellipse_per_shard, self.ellipse_samples)
        return range(shard * per, min((shard + 1) * per, total))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SimulationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown simulation settings {sorted(unknown)} (written by a newer prenet-jax?)")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def structures(self) -> list[str]:
        """The structure ids of this data set, in task order."""
        if self.structure_ids is not None:
            return list(self.structure_ids)
        return structures_mod.select_structures(self.n_structures, self.seed, self.amorphous_fraction)


# --------------------------------------------------------------------------------------
# tasks
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything one multislice run needs (drawn by :func:`draw_task`)."""

    dataset: str
    index: int
    structure_id: str
    energy_ev: float
    semiangle_mrad: float
    extent_a: float
    thicknesses_a: tuple[float, ...]
    orientation: str  # "zone", "random" or "isotropic"
    zone_axis: tuple[int, int, int]
    inplane_rad: float
    mistilt_rad: float
    mistilt_azimuth_rad: float
    rotation_seed: int
    defocus_a: float
    positions_a: tuple[tuple[float, float], ...]
    cut_seed: int
    phonon_seed: int


def _loguniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_task(
    config: SimulationConfig, structure_ids: Sequence[str], index: int, dataset: str = PATTERNS, kind: str | None = None
) -> TaskSpec:
    """Draw the settings of task ``index`` (a pure function of the arguments).

    ``kind`` ("crystal" or "amorphous") avoids building the structure to find out;
    when None it is read from the id prefix.
    """
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _STREAM[dataset], index]))
    sid = structure_ids[index % len(structure_ids)]
    kind = kind or ("amorphous" if sid.startswith("amorphous:") else "vacuum" if sid == "vacuum" else "crystal")
    energy = float(rng.choice(config.energies_kv)) * 1e3
    lam = wavelength(energy)
    for _ in range(10_000):
        radius = _loguniform(rng, *config.disk_radius_px)
        extent = _loguniform(rng, *config.extent_a)
        alpha = 1e3 * radius * lam / extent
        if config.semiangle_mrad[0] <= alpha <= config.semiangle_mrad[1]:
            break
    else:
        raise ValueError(
            "no (disk radius, extent) pair gives a semi-angle inside semiangle_mrad: widen disk_radius_px, extent_a or semiangle_mrad"
        )
    trange = config.thickness_a if dataset == PATTERNS else config.ellipse_thickness_a
    n_thick = config.thicknesses_per_task if dataset == PATTERNS else 1
    thick = tuple(sorted(float(t) for t in rng.uniform(*trange, size=n_thick)))
    if kind in ("amorphous", "vacuum"):
        orientation, uvw = "isotropic", (0, 0, 0)
    elif dataset == PATTERNS and rng.random() < config.zone_axis_fraction:
        orientation = "zone"
        uvw = structures_mod.ZONE_AXES[rng.integers(len(structures_mod.ZONE_AXES))]
    else:
        orientation, uvw = "random", (0, 0, 0)
    inplane = float(rng.uniform(0, 2 * math.pi))
    mistilt = float(rng.uniform(0, math.radians(config.mistilt_deg))) if orientation == "zone" else 0.0
    azimuth = float(rng.uniform(0, 2 * math.pi))
    n_pos = config.positions_per_task
    j = min(config.position_jitter_a, extent / 4)
    pos = tuple((extent / 2 + float(a), extent / 2 + float(b)) for a, b in rng.uniform(-j, j, size=(n_pos, 2)))
    return TaskSpec(
        dataset=dataset,
        index=index,
        structure_id=sid,
        energy_ev=energy,
        semiangle_mrad=alpha,
        extent_a=extent,
        thicknesses_a=thick,
        orientation=orientation,
        zone_axis=tuple(int(u) for u in uvw),
        inplane_rad=inplane,
        mistilt_rad=mistilt,
        mistilt_azimuth_rad=azimuth,
        rotation_seed=int(rng.integers(2**31)),
        defocus_a=float(rng.uniform(*config.defocus_a)),
        positions_a=pos,
        cut_seed=int(rng.integers(2**31)),
        phonon_seed=int(rng.integers(2**31)),
    )


def _rotation(task: TaskSpec, structure) -> np.ndarray:
    if task.orientation == "zone":
        return structures_mod.zone_axis_rotation(
            np.asarray(structure.atoms.cell), task.zone_axis, task.inplane_rad, task.mistilt_rad, task.mistilt_azimuth_rad
        )
    if task.orientation == "random":
        return structures_mod.random_rotation(np.random.default_rng(task.rotation_seed))
    return np.eye(3)


# --------------------------------------------------------------------------------------
# abTEM
# --------------------------------------------------------------------------------------


def _import_abtem(device: str, threads: int | None = None):
    try:
        import abtem
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("simulation needs abTEM: `pip install 'prenet-jax[simulate]'` (abtem==1.0.11)") from err
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    settings = {"diagnostics.progress_bar": False, "device": device}
    if threads:
        settings["fftw.threads"] = int(threads)
    abtem.config.set(settings)
    return abtem


def _diffraction(
    abtem,
    atoms,
    task: TaskSpec,
    config: SimulationConfig,
    device: str,
    phonons: int,
    exit_slices: tuple[int, ...] | None,
    positions,
    slices: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one multislice: returns patterns ``(n_thick, n_pos, S, S)`` and the exit thicknesses."""
    if phonons > 0:
        source = abtem.FrozenPhonons(atoms, num_configs=phonons, sigmas=config.phonon_sigma_a, seed=task.phonon_seed)
    else:
        source = atoms
    potential = abtem.Potential(
        source,
        gpts=config.gpts,
        slice_thickness=slices or config.slice_thickness_a,
        exit_planes=exit_slices,
        projection="infinite",
        parametrization="lobato",
        device=device,
    )
    probe = abtem.Probe(energy=task.energy_ev, semiangle_cutoff=task.semiangle_mrad, defocus=task.defocus_a, device=device)
    waves = probe.multislice(potential, scan=abtem.CustomScan(np.asarray(positions, dtype=np.float64)), lazy=False)
    # max_angle=None keeps the full fftshifted grid: the zero angle is at index gpts//2 for
    # any even grid, independent of how abTEM rounds its anti-aliasing cutoff.
    dp = waves.diffraction_patterns(max_angle=None, parity="even", fftshift=True)
    if phonons > 0:
        dp = dp.reduce_ensemble()
    if device == "gpu":
        dp = dp.to_cpu()
    arr = np.asarray(dp.array, dtype=np.float32)
    axes = [type(ax).__name__ for ax in dp.ensemble_axes_metadata]
    thick = None
    for ax in dp.ensemble_axes_metadata:
        if type(ax).__name__ == "ThicknessAxis":
            thick = np.asarray(ax.values, dtype=np.float64)
    if "ThicknessAxis" not in axes:
        arr = arr[None]
    if "PositionsAxis" not in axes:
        arr = arr[:, None]
    arr = arr.reshape((arr.shape[0], len(positions)) + arr.shape[-2:])
    g, s = arr.shape[-1], config.pattern_size
    lo = g // 2 - s // 2
    return arr[..., lo : lo + s, lo : lo + s], thick


def _slicing(thicknesses: Sequence[float], total: float, dz: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Exit-plane slice indices (strictly increasing) and the slice thicknesses of a run.

    ``total`` is cut into equal slices no thicker than ``dz``, and into at least as many
    slices as there are exit planes; each exit plane is the slice boundary nearest its
    thickness. The slices are passed to abTEM explicitly, so its slicing is ours.
    """
    n_slices = max(len(thicknesses), math.ceil(total / dz - 1e-9), 1)
    dz_eff = total / n_slices
    idx: list[int] = []
    for t in thicknesses:
        k = min(n_slices - 1, max(0, int(round(t / dz_eff)) - 1))
        if idx and k <= idx[-1]:
            k = idx[-1] + 1
        idx.append(k)
    for i in range(len(idx) - 1, 0, -1):  # pushing up may overflow the last slice: pull back down
        if idx[i] > n_slices - 1 - (len(idx) - 1 - i):
            idx[i] = n_slices - 1 - (len(idx) - 1 - i)
        if idx[i - 1] >= idx[i]:
            idx[i - 1] = idx[i] - 1
    idx[-1] = min(idx[-1], n_slices - 1)
    return tuple(idx), (dz_eff,) * n_slices


def _disk_com(pattern: np.ndarray, zero: float, radius: float) -> tuple[float, float]:
    """Centre of mass of the intensity within ``radius + 1`` px of the zero angle (diagnostic only)."""
    s = pattern.shape[-1]
    rr, cc = np.mgrid[:s, :s]
    mask = (rr - zero) ** 2 + (cc - zero) ** 2 <= (radius + 1.0) ** 2
    w = np.where(mask, pattern, 0.0).astype(np.float64)
    tot = w.sum()
    if tot <= 0:
        return (float("nan"), float("nan"))
    return (float((w * rr).sum() / tot), float((w * cc).sum() / tot))


def _common_meta(task: TaskSpec, structure, config: SimulationConfig, split: str, rotation: np.ndarray, n_atoms: int) -> dict:
    lam = wavelength(task.energy_ev)
    zero = config.pattern_size / 2
    return dict(
        structure_id=task.structure_id,
        source=task.structure_id.partition(":")[0],
        kind=structure.kind,
        formula=structure.formula,
        spacegroup=int(structure.spacegroup),
        split=split,
        task=int(task.index),
        energy_ev=task.energy_ev,
        wavelength_a=lam,
        semiangle_mrad=task.semiangle_mrad,
        disk_radius_px=task.semiangle_mrad * 1e-3 * task.extent_a / lam,
        extent_a=task.extent_a,
        reciprocal_pixel_inv_a=1.0 / task.extent_a,
        angular_pixel_mrad=1e3 * lam / task.extent_a,
        orientation=task.orientation,
        zone_axis=np.asarray(task.zone_axis, np.int32),
        rotation=np.asarray(rotation, np.float64).reshape(9),
        mistilt_mrad=1e3 * task.mistilt_rad,
        defocus_a=task.defocus_a,
        frozen_phonons=int(config.frozen_phonons),
        n_atoms=int(n_atoms),
        gpts=int(config.gpts),
        zero_angle=np.array([zero, zero], np.float64),
    )


def simulate_task(task: TaskSpec, config: SimulationConfig, device: str = "cpu", threads: int | None = None):
    """Simulate one task: ``(patterns (n, S, S) float32, list of n metadata dicts)``.

    Patterns come thickness-major: for each exit thickness, every probe position.
    """
    abtem = _import_abtem(device, threads)
    structure = structures_mod.build_structure(task.structure_id)
    rotation = _rotation(task, structure)
    total = task.thicknesses_a[-1]
    exits, slices = _slicing(task.thicknesses_a, total, config.slice_thickness_a)
    atoms = structures_mod.cut_box(structure, task.extent_a, total, rotation, np.random.default_rng(task.cut_seed))
    arr, thick = _diffraction(abtem, atoms, task, config, device, config.frozen_phonons, exits, task.positions_a, slices)
    if thick is None:
        thick = np.array([total])
    split = structures_mod.split_of(task.structure_id, config.split_fractions)
    base = _common_meta(task, structure, config, split, rotation, len(atoms))
    patterns, metas = [], []
    for i_t in range(arr.shape[0]):
        for i_p in range(arr.shape[1]):
            p = arr[i_t, i_p]
            m = dict(base)
            m.update(
                uid=f"p{task.index:07d}-{i_t * arr.shape[1] + i_p}",
                thickness_a=float(thick[i_t]),
                probe_position_a=np.asarray(task.positions_a[i_p], np.float64),
                disk_com=np.asarray(_disk_com(p, config.pattern_size / 2, base["disk_radius_px"]), np.float64),
                total_intensity=float(p.sum(dtype=np.float64)),
                n_averaged=1,
            )
            patterns.append(p)
            metas.append(m)
    return np.stack(patterns), metas


def _rotate_about(pattern: np.ndarray, center: float, angle: float) -> np.ndarray:
    """Rotate a pattern in-plane about ``(center, center)`` (bilinear, host side)."""
    from scipy.ndimage import affine_transform

    c, s = math.cos(angle), math.sin(angle)
    m = np.array([[c, s], [-s, c]])  # (row, col) order; the inverse map of a rotation by angle
    ctr = np.array([center, center])
    return affine_transform(pattern, m, offset=ctr - m @ ctr, order=1, mode="constant", cval=0.0)


def simulate_ellipse_sample(task: TaskSpec, config: SimulationConfig, device: str = "cpu", threads: int | None = None):
    """One pattern of the ellipse data set: the average of many patterns of one structure
    and one probe setting (``ellipse_orientations`` random orientations x probe positions),
    then of ``ellipse_rotations`` in-plane rotations about the zero angle, so Bragg spots
    smear into rings. Returns ``(pattern (S, S) float32, metadata dict)``."""
    abtem = _import_abtem(device, threads)
    structure = structures_mod.build_structure(task.structure_id)
    rng = np.random.default_rng(task.rotation_seed)
    total = task.thicknesses_a[-1]
    acc = np.zeros((config.pattern_size,) * 2, np.float64)
    n = 0
    n_atoms = 0
    for _ in range(config.ellipse_orientations):
        rotation = structures_mod.random_rotation(rng) if structure.kind == "crystal" else np.eye(3)
        atoms = structures_mod.cut_box(structure, task.extent_a, total, rotation, rng)
        n_atoms = len(atoms)
        arr, _ = _diffraction(abtem, atoms, task, config, device, config.frozen_phonons, None, task.positions_a)
        acc += arr.sum(axis=(0, 1), dtype=np.float64)
        n += arr.shape[0] * arr.shape[1]
    mean = acc / n
    zero = config.pattern_size / 2
    k = config.ellipse_rotations
    offsets = rng.uniform(0, 2 * math.pi)
    rot = sum(_rotate_about(mean, zero, offsets + 2 * math.pi * i / k) for i in range(k)) / k
    split = structures_mod.split_of(task.structure_id, config.split_fractions)
    meta = _common_meta(task, structure, config, split, np.eye(3), n_atoms)
    meta.update(
        uid=f"e{task.index:07d}",
        thickness_a=float(total),
        probe_position_a=np.full(2, np.nan),
        disk_com=np.asarray(_disk_com(rot, zero, meta["disk_radius_px"]), np.float64),
        total_intensity=float(rot.sum()),
        n_averaged=int(n * k),
        orientation="average",
    )
    return rot.astype(np.float32), meta


def simulate_shard(
    config: SimulationConfig,
    dataset: str,
    shard: int,
    device: str = "cpu",
    threads: int | None = None,
    structure_ids: Sequence[str] | None = None,
) -> dict:
    """Compute one shard in memory: ``{"patterns": (N, S, S), "meta": {name: (N, ...)}}``.

    A pure function of its arguments (this is what dask workers run).
    """
    ids = list(structure_ids) if structure_ids is not None else config.structures()
    pats, metas = [], []
    for t in config.shard_tasks(dataset, shard):
        task = draw_task(config, ids, t, dataset)
        if dataset == PATTERNS:
            p, m = simulate_task(task, config, device, threads)
            pats.append(p)
            metas.extend(m)
        else:
            p, m = simulate_ellipse_sample(task, config, device, threads)
            pats.append(p[None])
            metas.append(m)
    meta = {k: np.asarray([m[k] for m in metas]) for k in metas[0]}
    return {"patterns": np.concatenate(pats), "meta": meta, "dataset": dataset, "shard": shard}


# --------------------------------------------------------------------------------------
# shards
# --------------------------------------------------------------------------------------


def _shard_path(root: Path, dataset: str, shard: int) -> Path:
    return root / dataset / f"shard-{shard:05d}.h5"


def round_mantissa(x: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to ``bits`` mantissa bits (nearest; relative error <= 2^-(bits+1))."""
    x = np.ascontiguousarray(x, np.float32)
    drop = 23 - int(bits)
    if drop <= 0:
        return x
    u = x.view(np.uint32)
    u = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    return u.view(np.float32)


def write_shard(path: str | os.PathLike, data: dict, attrs: dict | None = None, compression: int = 4, mantissa_bits: int = 23) -> Path:
    """Write a shard atomically (temporary name, fsync, rename): it is whole or absent.

    ``mantissa_bits < 23`` rounds the patterns first (see ``SimulationConfig.mantissa_bits``).
    """
    import h5py

    path = Path(path)
    pats = round_mantissa(np.asarray(data["patterns"], np.float32), mantissa_bits)
    n, h, w = pats.shape
    with atomic_path(path, fsync=True) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("patterns", data=pats, chunks=(1, h, w), compression="gzip", compression_opts=compression, shuffle=True)
        g = f.create_group("meta")
        for k, v in data["meta"].items():
            v = np.asarray(v)
            if v.dtype.kind in "UO":
                g.create_dataset(k, data=v.astype(object), dtype=h5py.string_dtype())
            else:
                g.create_dataset(k, data=v)
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["n_patterns"] = n
        f.attrs["mantissa_bits"] = int(mantissa_bits)
        f.attrs["zero_angle_convention"] = (
            "zero angle (optical axis) at meta/zero_angle = (S/2, S/2) in (row, col); the geometric "
            "centre is ((S-1)/2, (S-1)/2); intensities are fractions of the incident electrons"
        )
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path


def read_shard(path: str | os.PathLike, patterns: bool = True) -> dict:
    """Read a shard back: ``{"patterns": (N, S, S) float32 or None, "meta": {...}, "attrs": {...}}``."""
    import h5py

    with h5py.File(path, "r") as f:
        meta = {}
        for k, ds in f["meta"].items():
            v = ds[()]
            if ds.dtype.kind == "O":
                v = np.asarray([x.decode() if isinstance(x, bytes) else x for x in v], dtype=object)
            meta[k] = v
        return {
            "patterns": f["patterns"][()] if patterns else None,
            "meta": meta,
            "attrs": dict(f.attrs),
        }


def _shard_ok(path: Path, expected: int) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT and int(f.attrs["n_patterns"]) == expected == f["patterns"].shape[0]
    except Exception:  # unreadable: recompute it
        return False


# --------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------

_MANIFEST_COLUMNS = (
    "uid",
    "dataset",
    "shard",
    "index",
    "structure_id",
    "source",
    "kind",
    "formula",
    "spacegroup",
    "split",
    "task",
    "energy_ev",
    "wavelength_a",
    "semiangle_mrad",
    "disk_radius_px",
    "extent_a",
    "reciprocal_pixel_inv_a",
    "angular_pixel_mrad",
    "thickness_a",
    "orientation",
    "zone_axis",
    "mistilt_mrad",
    "defocus_a",
    "frozen_phonons",
    "n_atoms",
    "probe_position_a",
    "zero_angle",
    "disk_com",
    "total_intensity",
    "n_averaged",
    "gpts",
)


def _fmt(v) -> str:
    if isinstance(v, (np.ndarray, list, tuple)):
        return " ".join(_fmt(x) for x in np.asarray(v).ravel())
    if isinstance(v, (float, np.floating)):
        return repr(float(v)) if math.isfinite(v) else "nan"
    return str(v)


def _manifest_rows(root: Path, dataset: str, shard: int, meta: dict) -> list[dict]:
    n = len(meta["uid"])
    rel = str(_shard_path(Path("."), dataset, shard))
    rows = []
    for i in range(n):
        row = {"uid": meta["uid"][i], "dataset": dataset, "shard": rel, "index": i}
        for c in _MANIFEST_COLUMNS[4:]:
            row[c] = _fmt(meta[c][i])
        rows.append(row)
    return rows


def _write_manifest(root: Path, rows_by_shard: dict) -> None:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(_MANIFEST_COLUMNS), lineterminator="\n")
    w.writeheader()
    for key in sorted(rows_by_shard):
        w.writerows(rows_by_shard[key])
    atomic_write_text(root / "manifest.csv", buf.getvalue())


def _write_structures(root: Path, ids: Sequence[str], fractions, rows_by_shard: dict) -> None:
    import io

    info: dict[str, dict] = {}
    counts: dict[str, int] = {}
    for rows in rows_by_shard.values():
        for r in rows:
            info.setdefault(r["structure_id"], r)
            counts[r["structure_id"]] = counts.get(r["structure_id"], 0) + 1
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["structure_id", "source", "kind", "formula", "spacegroup", "split", "n_patterns"])
    for sid in ids:
        r = info.get(sid, {})
        kind = r.get("kind", "amorphous" if sid.startswith("amorphous:") else "crystal")
        w.writerow(
            [
                sid,
                sid.partition(":")[0],
                kind,
                r.get("formula", ""),
                r.get("spacegroup", ""),
                structures_mod.split_of(sid, fractions),
                counts.get(sid, 0),
            ]
        )
    atomic_write_text(root / "structures.csv", buf.getvalue())


def read_manifest(root: str | os.PathLike, dataset: str | None = None, split: str | None = None) -> list[dict]:
    """Rows of ``manifest.csv`` (strings), optionally one data set and one split."""
    path = Path(root) / "manifest.csv"
    if not path.exists():
        raise ValueError(f"{path} does not exist: run `prenet-jax simulate --output {root}` first")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [r for r in rows if (dataset is None or r["dataset"] == dataset) and (split is None or r["split"] == split)]


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def _versions() -> dict:
    return {"prenet_jax_format": FORMAT_VERSION, **versions("abtem", "ase", "pyxtal", "crystals", "h5py")}


def _prepare_output(root: Path, config: SimulationConfig, ids: list[str], resume: bool, overwrite: bool) -> None:
    run_file = root / "run.json"
    if run_file.exists() and overwrite:
        for ds in (PATTERNS, ELLIPSE):
            for p in (root / ds).glob("*shard-*.h5*"):
                p.unlink()
        for name in ("run.json", "manifest.csv", "structures.csv"):
            (root / name).unlink(missing_ok=True)
    elif run_file.exists():
        if not resume:
            raise ValueError(f"{root} already holds a simulation: pass --resume to continue it or --overwrite to replace it")
        old = json.loads(run_file.read_text())
        if old.get("format") != FORMAT:
            raise ValueError(f"{run_file} is not a prenet-jax simulation run; choose another --output")
        old_cfg = old["config"]
        new_cfg = json.loads(json.dumps(config.to_dict()))
        diff = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        if diff:
            raise ValueError(
                f"{root} holds a run with different settings ({', '.join(diff)}); resume it with the same "
                "settings, or pass --overwrite, or choose a new --output"
            )
        if old.get("structures") != ids:
            raise ValueError(f"{root} was made from a different structure list; pass --overwrite or a new --output")
        return
    elif root.exists() and any(root.iterdir()) and not overwrite:
        raise ValueError(f"{root} exists and is not empty: choose a new --output or pass --overwrite")
    root.mkdir(parents=True, exist_ok=True)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "structures": ids,
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write_text(run_file, json.dumps(record, indent=1))


def _remote_shard(config_dict: dict, dataset: str, shard: int, device: str, ids: list[str]) -> dict:
    """Entry point on a dask worker: one thread per worker, abTEM computes in-process."""
    cfg = SimulationConfig.from_dict(config_dict)
    return simulate_shard(cfg, dataset, shard, device, threads=1, structure_ids=ids)


def _existing_shards(root: Path, config: SimulationConfig) -> tuple[dict, list[tuple[str, int]], dict[str, int]]:
    """What a resumed run keeps and what it computes: the manifest rows of the complete
    shards found in ``root``, the shards to compute (incomplete ones are deleted, as are
    the temporary files of an interrupted writer) and the pattern count each data set
    should reach."""
    for ds in (PATTERNS, ELLIPSE):
        d = root / ds
        if d.exists():
            for stale in d.glob(".shard-*.h5.*tmp*"):  # left by an interrupted writer
                stale.unlink()

    rows: dict[tuple[str, int], list[dict]] = {}
    todo: list[tuple[str, int]] = []
    expected_total = {PATTERNS: 0, ELLIPSE: 0}
    for ds in (PATTERNS, ELLIPSE):
        per = config.patterns_per_task if ds == PATTERNS else 1
        for k in range(config.n_shards(ds)):
            n_expected = len(config.shard_tasks(ds, k)) * per
            expected_total[ds] += n_expected
            path = _shard_path(root, ds, k)
            if path.exists() and _shard_ok(path, n_expected):
                rows[(ds, k)] = _manifest_rows(root, ds, k, read_shard(path, patterns=False)["meta"])
            else:
                if path.exists():
                    path.unlink()
                todo.append((ds, k))
    return rows, todo, expected_total


def _progress_bar(n_done: int, n_todo: int):
    """A tqdm bar of patterns, started at those already there."""
    from tqdm.auto import tqdm

    # rate_noinv: always patterns/s (tqdm would switch to s/pattern below 1/s)
    return tqdm(
        total=n_done + n_todo,
        initial=n_done,
        unit="pattern",
        desc="simulate",
        dynamic_ncols=True,
        smoothing=0.05,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]",
    )


def _run_on_dask(config: SimulationConfig, todo, device: str, ids, scheduler: str | None, workers: int, store, out_of_time) -> None:
    """The shards of ``todo`` on dask.distributed workers (a running ``scheduler``, else a
    local cluster of ``workers`` processes), each handed to ``store`` here as it comes
    back; when ``out_of_time()`` the shards still running are abandoned."""
    from dask.distributed import Client, LocalCluster, as_completed

    if scheduler:
        client = Client(scheduler)
        cluster = None
    else:
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        cfg = config.to_dict()
        futures = [client.submit(_remote_shard, cfg, ds, k, device, ids, pure=False) for ds, k in todo]
        for fut in as_completed(futures):
            store(fut.result())
            fut.release()
            if out_of_time():
                client.cancel(futures)
                break
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_simulation(
    config: SimulationConfig,
    output: str | os.PathLike,
    device: str = "cpu",
    workers: int = 1,
    scheduler: str | None = None,
    resume: bool = True,
    overwrite: bool = False,
    max_shards: int | None = None,
    progress: bool = True,
    threads: int | None = None,
    time_limit: float | None = None,
) -> dict:
    """Simulate a data set into ``output`` (resumable; see the module docstring).

    Parameters
    ----------
    config : SimulationConfig
    output : directory
    device : "cpu" or "gpu" (abTEM with cupy)
    workers : int
        1 runs in this process; more start a local dask.distributed cluster with this
        many single-threaded worker processes.
    scheduler : str or None
        Address of a running dask.distributed scheduler (``tcp://host:8786``): shards run
        on its workers (which need prenet-jax and abTEM installed) and come back to this
        process, which writes them, so no shared file system is needed.
    resume : bool
        Continue a run found in ``output`` (same settings) by computing only its missing
        shards. With False an existing run is an error.
    overwrite : bool
        Delete a previous run's files in ``output`` first.
    max_shards : int or None
        Stop after computing this many new shards (for time-limited jobs; run again to
        continue).
    progress : bool
        A tqdm bar with patterns/s.
    threads : int or None
        FFTW threads in this process (default 1: on a loaded 2-core machine two FFTW
        threads were measured 9x slower than one; use ``workers`` for parallelism).
    time_limit : float or None
        Seconds: start no shard after this, and abandon the shards still running then
        (what is written stays; rerun to continue). For chunked batch jobs.

    Returns
    -------
    dict with the counts written and the measured rate.
    """
    root = Path(output)
    ids = config.structures()
    _prepare_output(root, config, ids, resume, overwrite)
    rows, todo, expected_total = _existing_shards(root, config)
    if max_shards is not None:
        todo = todo[: max(0, int(max_shards))]

    n_done = sum(len(r) for r in rows.values())
    n_todo = sum(len(config.shard_tasks(ds, k)) * (config.patterns_per_task if ds == PATTERNS else 1) for ds, k in todo)
    bar = _progress_bar(n_done, n_todo) if progress else None
    attrs = {"config": json.dumps(config.to_dict())}
    t0 = time.perf_counter()
    out_of_time = (lambda: False) if time_limit is None else (lambda: time.perf_counter() - t0 > time_limit)
    c0 = time.process_time()
    written = 0
    last_manifest = time.monotonic()

    def _store(data: dict) -> None:
        nonlocal written, last_manifest
        ds, k = data["dataset"], data["shard"]
        write_shard(_shard_path(root, ds, k), data, attrs={**attrs, "dataset": ds, "shard": k}, mantissa_bits=config.mantissa_bits)
        rows[(ds, k)] = _manifest_rows(root, ds, k, data["meta"])
        written += len(data["patterns"])
        if bar is not None:
            bar.update(len(data["patterns"]))
        if time.monotonic() - last_manifest > 60:  # keep a usable manifest during long runs
            _write_manifest(root, rows)
            last_manifest = time.monotonic()

    try:
        if todo and (scheduler or workers > 1):
            _run_on_dask(config, todo, device, ids, scheduler, workers, _store, out_of_time)
        else:
            n_threads = threads or 1
            for ds, k in todo:
                if out_of_time():
                    break
                _store(simulate_shard(config, ds, k, device, threads=n_threads, structure_ids=ids))
    finally:
        if bar is not None:
            bar.close()
        _write_manifest(root, rows)
        _write_structures(root, ids, config.split_fractions, rows)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0  # this process only: meaningful for in-process runs
    complete = all((ds, k) in rows for ds in (PATTERNS, ELLIPSE) for k in range(config.n_shards(ds)))
    return {
        "output": str(root),
        "written": written,
        "seconds": elapsed,
        "patterns_per_s": written / elapsed if elapsed > 0 else float("nan"),
        "cpu_seconds": cpu,
        "total": sum(len(r) for r in rows.values()),
        "expected": sum(expected_total.values()),
        "complete": complete,
    }


# --------------------------------------------------------------------------------------
# reading for training
# --------------------------------------------------------------------------------------


class PatternStore:
    """Random access to a simulated data set by split, for training loops.

    Parameters
    ----------
    root : directory written by :func:`run_simulation`
    dataset : "patterns" or "ellipse"
    split : "train", "val", "test" or None (all)

    Attributes
    ----------
    rows : list of manifest rows (dicts of strings)
    """

    def __init__(self, root: str | os.PathLike, dataset: str = PATTERNS, split: str | None = "train"):
        self.root = Path(root)
        self.rows = read_manifest(self.root, dataset, split)
        if not self.rows:
            raise ValueError(f"no {dataset} patterns of split {split!r} in {self.root}/manifest.csv")
        self._files: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def _file(self, rel: str):
        import h5py

        f = self._files.get(rel)
        if f is None:
            f = self._files[rel] = h5py.File(self.root / rel, "r")
        return f

    def get(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(patterns (B, S, S) float32, zero_angle (B, 2) float32)`` of manifest rows ``indices``."""
        indices = np.asarray(list(indices), dtype=np.int64)
        rows = [self.rows[i] for i in indices]
        size = self._file(rows[0]["shard"])["patterns"].shape[1:] if rows else (0, 0)
        out = np.empty((len(rows),) + tuple(size), np.float32)
        # One read per shard with increasing indices (what h5py's fancy indexing requires).
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for k, r in enumerate(rows):
            by_shard.setdefault(r["shard"], []).append((int(r["index"]), k))
        for shard, pairs in by_shard.items():
            pairs.sort()
            idx = [i for i, _ in pairs]
            uniq, inverse = np.unique(idx, return_inverse=True)
            block = self._file(shard)["patterns"][uniq.tolist()]
            out[[k for _, k in pairs]] = block[inverse]
        zeros = np.asarray([[float(x) for x in r["zero_angle"].split()] for r in rows], np.float32).reshape(-1, 2)
        return out, zeros

    def batches(self, batch_size: int, seed: int = 0, epochs: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled batches (a new permutation each epoch; ``epochs=None`` repeats forever)."""
        rng = np.random.default_rng(seed)
        e = 0
        while epochs is None or e < epochs:
            order = rng.permutation(len(self))
            for s in range(0, len(order) - batch_size + 1, batch_size):
                yield self.get(order[s : s + batch_size])
            e += 1

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
