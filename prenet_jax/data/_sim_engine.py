"""The simulation engine: a task drawn from the configuration (:func:`draw_task`) and
simulated with abTEM (:func:`simulate_task`, :func:`simulate_ellipse_sample`), a shard
of tasks (:func:`simulate_shard`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from . import _structures as structures_mod
from ._sim_config import _STREAM, PATTERNS, SimulationConfig, wavelength

__all__ = ["TaskSpec", "draw_task", "simulate_ellipse_sample", "simulate_shard", "simulate_task"]


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
    jitter = rng.uniform(-j, j, size=(n_pos, 2))  # drawn for a raster too: the draws after it stay the same
    if config.scan_grid:
        line = np.linspace(-j, j, config.scan_grid)
        jitter = np.stack(np.meshgrid(line, line, indexing="ij"), -1).reshape(-1, 2)
    pos = tuple((extent / 2 + float(a), extent / 2 + float(b)) for a, b in jitter)
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
