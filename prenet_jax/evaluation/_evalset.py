"""Held-out evaluation sets: clean patterns of test-split structures, abTEM or analytic.

Two kinds of clean data are needed, both centred and undistorted, in fractions of the
incident electrons per pixel with a known zero angle (the label):

``single``
    Independent patterns, one structure per task (several exit thicknesses and probe
    positions per task). The centre and ellipse tables use them.
``grids``
    4D-STEM scans: ``grid_size x grid_size`` probe positions on a raster spanning
    +-``grid_halfwidth_a`` of one structure at one thickness, in scan order. The scan
    denoising rows use them (a frame's scan neighbours are the neighbouring positions).
``scans``
    Small scan patches: ``scan_frames`` probe positions within +-``scan_halfwidth_a`` of
    one point of one structure at one thickness, i.e. the neighbouring frames of a 4D
    cube. The denoising table uses them, because the SVD/PCA baseline denoises a frame
    from its neighbours and needs such a neighbourhood.

Sources
-------
``abtem``
    :func:`prenet_jax.data._simulate.run_simulation` into ``<root>/single`` and
    ``<root>/scans``, restricted to structures whose split
    (:func:`prenet_jax.data._structures.split_of`) is ``"test"``, so no structure seen in
    training is evaluated. The crystals are the test-split members of the training set's
    structure list (``select_structures(1024, 0)``), the amorphous boxes come from the
    catalogue's test split (more of them than the training list holds, so the amorphous
    rows have enough patterns).
``synthetic``
    Analytic patterns (:func:`prenet_jax.disk_pattern` for crystals; a direct disk with
    diffuse halo rings for "amorphous"), for CI and quick runs: no abTEM needed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np

from ..data import disk_pattern

__all__ = ["EvalSetConfig", "EvalSet", "held_out_structures", "generate_abtem", "load_abtem", "make_synthetic", "load_or_make"]


@dataclasses.dataclass(frozen=True)
class EvalSetConfig:
    """What the held-out set holds.

    Attributes
    ----------
    n_patterns : independent patterns (``single``), rounded up to whole tasks
    n_scans : scan patches; ``scan_frames`` frames each
    amorphous_fraction, scan_amorphous_fraction : share of amorphous structures in each part
    pattern_size, gpts : abTEM frame size and multislice grid (see ``SimulationConfig``)
    thicknesses_per_task, positions_per_task : patterns per ``single`` task
    scan_halfwidth_a : scan frames lie within this half-width (Angstrom) of the patch centre
    n_grids, grid_size, grid_halfwidth_a, grid_amorphous_fraction : raster scans
        (``grids``): how many, positions per side, the half-width they span (Angstrom)
        and the share of amorphous structures
    seed : seeds the tasks (the structures are fixed by the split)
    train_structures, train_seed : the training set's ``select_structures`` arguments,
        whose test-split members are the held-out crystals
    """

    n_patterns: int = 512
    n_scans: int = 16
    scan_frames: int = 32
    amorphous_fraction: float = 0.3
    scan_amorphous_fraction: float = 0.5
    pattern_size: int = 256
    gpts: int = 720
    thicknesses_per_task: int = 2
    positions_per_task: int = 4
    scan_halfwidth_a: float = 2.0
    n_grids: int = 8
    grid_size: int = 16
    grid_halfwidth_a: float = 2.0
    grid_amorphous_fraction: float = 0.5
    seed: int = 0
    train_structures: int = 1024
    train_seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvalSet:
    """Clean held-out data in memory.

    Attributes
    ----------
    single : (N, S, S) float32 clean patterns
    single_zero : (N, 2) float32 zero-angle positions (row, col)
    single_kind : (N,) str, "crystal" or "amorphous"
    single_group : (N,) int, patterns of one task (one structure and probe setting) share it
    single_id : (N,) str, structure ids
    scans : (M, F, S, S) float32 scan patches
    scans_zero : (M, 2) float32
    scans_kind, scans_id : (M,) str
    grids : (G, n, n, S, S) float32 raster scans (``(0, 0, 0, S, S)`` where the set has none)
    grids_zero : (G, 2) float32
    grids_kind, grids_id : (G,) str
    source : "abtem" or "synthetic"
    info : provenance (settings, paths)
    """

    single: np.ndarray
    single_zero: np.ndarray
    single_kind: np.ndarray
    single_group: np.ndarray
    single_id: np.ndarray
    scans: np.ndarray
    scans_zero: np.ndarray
    scans_kind: np.ndarray
    scans_id: np.ndarray
    source: str
    info: dict
    grids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0, 0, 0), np.float32))
    grids_zero: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.float32))
    grids_kind: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, str))
    grids_id: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, str))


# ----------------------------------------------------------------------------- abTEM


def held_out_structures(n: int, amorphous_fraction: float, train_structures: int = 1024, train_seed: int = 0, offset: int = 0) -> list[str]:
    """``n`` held-out structure ids (split ``"test"``), crystals and amorphous interleaved.

    ``offset`` starts each list further along (the scan set uses other structures than
    the single set where there are enough).
    """
    from .. import data as st  # the face, looked up at the call: tests replace select_structures there

    crystals = [
        s for s in st.select_structures(train_structures, train_seed, 0.1) if st.split_of(s) == "test" and not s.startswith("amorphous:")
    ]
    amorphous = [c.id for c in st.catalogue() if c.kind == "amorphous" and st.split_of(c.id) == "test"]
    n_am = int(round(n * amorphous_fraction))
    n_cr = n - n_am
    if not crystals or (n_am and not amorphous):
        raise ValueError("the structure catalogue has no test-split structures of a needed kind")

    def take(pool, k):
        return [pool[(offset + i) % len(pool)] for i in range(k)]

    cr, am = take(crystals, n_cr), take(amorphous, n_am)
    # Interleave evenly so that any prefix of the tasks mixes kinds.
    out, i, j = [], 0, 0
    for k in range(n):
        if j < n_am and (i >= n_cr or (j + 1) * n <= (k + 1) * n_am):
            out.append(am[j])
            j += 1
        else:
            out.append(cr[i])
            i += 1
    return out


def _sim_configs(cfg: EvalSetConfig):
    from ..data import SimulationConfig

    per = cfg.thicknesses_per_task * cfg.positions_per_task
    n_tasks = -(-cfg.n_patterns // per)
    single = SimulationConfig(
        structure_ids=tuple(held_out_structures(n_tasks, cfg.amorphous_fraction, cfg.train_structures, cfg.train_seed)),
        n_patterns=n_tasks * per,
        seed=cfg.seed,
        pattern_size=cfg.pattern_size,
        gpts=cfg.gpts,
        thicknesses_per_task=cfg.thicknesses_per_task,
        positions_per_task=cfg.positions_per_task,
        tasks_per_shard=2,
    )
    scans = SimulationConfig(
        structure_ids=tuple(
            held_out_structures(cfg.n_scans, cfg.scan_amorphous_fraction, cfg.train_structures, cfg.train_seed, offset=n_tasks)
        ),
        n_patterns=cfg.n_scans * cfg.scan_frames,
        seed=cfg.seed + 1,
        pattern_size=cfg.pattern_size,
        gpts=cfg.gpts,
        thicknesses_per_task=1,
        positions_per_task=cfg.scan_frames,
        position_jitter_a=cfg.scan_halfwidth_a,
        tasks_per_shard=1,
    )
    if not cfg.n_grids:
        return single, scans, None
    grids = SimulationConfig(
        structure_ids=tuple(
            held_out_structures(
                cfg.n_grids, cfg.grid_amorphous_fraction, cfg.train_structures, cfg.train_seed, offset=n_tasks + cfg.n_scans
            )
        ),
        n_patterns=cfg.n_grids * cfg.grid_size**2,
        seed=cfg.seed + 2,
        pattern_size=cfg.pattern_size,
        gpts=cfg.gpts,
        thicknesses_per_task=1,
        positions_per_task=cfg.grid_size**2,
        position_jitter_a=cfg.grid_halfwidth_a,
        scan_grid=cfg.grid_size,
        tasks_per_shard=1,
    )
    return single, scans, grids


def generate_abtem(
    root, cfg: EvalSetConfig = EvalSetConfig(), workers: int = 1, progress: bool = True, time_limit: float | None = None
) -> Path:
    """Simulate the held-out set with abTEM into ``root`` (resumable: rerun to continue).

    Writes ``<root>/single``, ``<root>/scans`` and ``<root>/grids`` (each a ``prenet-jax simulate`` run)
    and ``<root>/evalset.json``. With ``time_limit`` (seconds) it stops in time and
    raises ``TimeoutError`` when the set is not complete yet.
    """
    import time

    from ..data import run_simulation

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    single, scans, grids = _sim_configs(cfg)
    parts = [("single", single), ("scans", scans)] + ([("grids", grids)] if grids is not None else [])
    (root / "evalset.json").write_text(json.dumps({"format": "prenet-jax-evalset", "config": cfg.to_dict()}, indent=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        t0 = time.perf_counter()
        for name, sc in parts:
            left = None if time_limit is None else time_limit - (time.perf_counter() - t0)
            if left is not None and left <= 0:
                raise TimeoutError(f"out of time before simulating {root / name}: rerun to resume")
            res = run_simulation(sc, root / name, workers=workers, progress=progress, time_limit=left)
            if not res["complete"]:
                if left is not None:
                    raise TimeoutError(f"simulation of {root / name} stopped at the time limit: rerun to resume")
                raise RuntimeError(f"simulation of {root / name} is incomplete: rerun to resume")
    return root


def _read_run(path: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    from ..data import PatternStore

    store = PatternStore(path, dataset="patterns", split=None)
    try:
        clean, zero = store.get(range(len(store)))
        rows = list(store.rows)
    finally:
        store.close()
    return clean, zero, rows


def load_abtem(root, max_patterns: int | None = None, max_scans: int | None = None) -> EvalSet:
    """Read a set written by :func:`generate_abtem` (only its test-split patterns)."""
    from ..data import split_of

    root = Path(root)
    clean, zero, rows = _read_run(root / "single")
    keep = [i for i, r in enumerate(rows) if r["split"] == "test" or split_of(r["structure_id"]) == "test"]
    if len(keep) < len(rows):
        warnings.warn(f"{len(rows) - len(keep)} patterns of {root / 'single'} are not of the test split: left out", stacklevel=2)
    keep = keep[:max_patterns] if max_patterns else keep
    single_rows = [rows[i] for i in keep]
    sc, sz, srows = _read_run(root / "scans")
    # Group the scan frames by task: frames of one task are one patch.
    tasks = sorted({int(r["task"]) for r in srows})
    tasks = tasks[:max_scans] if max_scans else tasks
    patches, pz, pk, pid = [], [], [], []
    for t in tasks:
        idx = [i for i, r in enumerate(srows) if int(r["task"]) == t]
        patches.append(sc[idx])
        pz.append(sz[idx[0]])
        pk.append(srows[idx[0]]["kind"])
        pid.append(srows[idx[0]]["structure_id"])
    f = min(len(p) for p in patches)
    info = {"root": str(root), "disk_radius_px": [float(r["disk_radius_px"]) for r in single_rows]}
    cfg_file = root / "evalset.json"
    if cfg_file.exists():
        info["config"] = json.loads(cfg_file.read_text()).get("config")
    grids = _read_grids(root / "grids") if (root / "grids").exists() else {}
    return EvalSet(
        single=clean[keep],
        single_zero=zero[keep],
        single_kind=np.asarray([r["kind"] for r in single_rows]),
        single_group=np.asarray([int(r["task"]) for r in single_rows]),
        single_id=np.asarray([r["structure_id"] for r in single_rows]),
        scans=np.stack([p[:f] for p in patches]),
        scans_zero=np.stack(pz),
        scans_kind=np.asarray(pk),
        scans_id=np.asarray(pid),
        source="abtem",
        info=info,
        **grids,
    )


def _read_grids(path: Path) -> dict:
    """The raster scans of ``path`` as :class:`EvalSet` fields (``grids`` ...), one per task."""
    gc, gz, grows = _read_run(path)
    cube, zero, kind, sid = [], [], [], []
    for t in sorted({int(r["task"]) for r in grows}):
        idx = [i for i, r in enumerate(grows) if int(r["task"]) == t]
        n = math.isqrt(len(idx))
        if n * n != len(idx):
            raise ValueError(f"{path}: task {t} holds {len(idx)} frames, not a square raster scan")
        cube.append(gc[idx].reshape(n, n, *gc.shape[-2:]))
        zero.append(gz[idx[0]])
        kind.append(grows[idx[0]]["kind"])
        sid.append(grows[idx[0]]["structure_id"])
    return {"grids": np.stack(cube), "grids_zero": np.stack(zero), "grids_kind": np.asarray(kind), "grids_id": np.asarray(sid)}


# ----------------------------------------------------------------------------- analytic


def _amorphous_pattern(shape, zero, radius, rng) -> np.ndarray:
    """A direct disk plus two diffuse halo rings with a weak random speckle (max about 1)."""
    h, w = shape
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    d = np.hypot(rows - zero[0], cols - zero[1])
    out = disk_pattern(shape, zero, radius, None, None).astype(np.float64)
    r1 = radius * rng.uniform(2.0, 2.8)
    for rr, amp in ((r1, rng.uniform(0.05, 0.15)), (1.8 * r1, rng.uniform(0.02, 0.06))):
        out += amp * np.exp(-0.5 * ((d - rr) / (0.12 * rr)) ** 2)
    speckle = rng.gamma(8.0, 1.0 / 8.0, size=shape)  # smooth multiplicative texture of the halo
    from scipy.ndimage import gaussian_filter

    speckle = gaussian_filter(speckle, 1.0)
    # Friedel symmetry about the zero angle (the patterns are symmetric in kinematic scattering).
    zr, zc = int(round(2 * zero[0])), int(round(2 * zero[1]))
    flipped = np.zeros_like(speckle)
    r_idx = zr - np.arange(h)
    c_idx = zc - np.arange(w)
    ok_r, ok_c = (r_idx >= 0) & (r_idx < h), (c_idx >= 0) & (c_idx < w)
    flipped[np.ix_(ok_r, ok_c)] = speckle[np.ix_(r_idx[ok_r], c_idx[ok_c])]
    speckle = 0.5 * (speckle + np.where(flipped > 0, flipped, speckle))
    halo = out - disk_pattern(shape, zero, radius, None, None)
    return (out + halo * (speckle - 1.0)).astype(np.float32)


def _synthetic_pattern(kind: str, size: int, zero, rng) -> np.ndarray:
    radius = float(np.exp(rng.uniform(np.log(size / 24), np.log(size / 8))))
    if kind == "amorphous":
        p = _amorphous_pattern((size, size), zero, radius, rng)
    else:
        ang = rng.uniform(0, np.pi)
        g1 = rng.uniform(1.8, 2.6) * np.array([np.sin(ang), np.cos(ang)])
        ang2 = ang + rng.uniform(np.pi / 3, 2 * np.pi / 3)
        g2 = rng.uniform(1.8, 2.6) * np.array([np.sin(ang2), np.cos(ang2)])
        p = disk_pattern(
            (size, size),
            zero,
            radius,
            None,
            (tuple(g1), tuple(g2)),
            orders=2,
            bragg_intensity=float(rng.uniform(0.05, 0.3)),
            edge=float(rng.uniform(0.5, 1.0)),
        )
    return (p / p.sum(dtype=np.float64)).astype(np.float32)


def _kind_at(i: int, fraction: float) -> str:
    """Evenly interleaved kinds: item ``i`` is amorphous when it crosses a multiple of ``1/fraction``."""
    return "amorphous" if math.floor((i + 1) * fraction) > math.floor(i * fraction) else "crystal"


def make_synthetic(
    n_patterns: int = 16,
    n_scans: int = 2,
    scan_frames: int = 8,
    size: int = 64,
    amorphous_fraction: float = 0.5,
    per_group: int = 4,
    seed: int = 0,
    n_grids: int = 0,
    grid_size: int = 6,
) -> EvalSet:
    """An analytic held-out set (no abTEM): for CI and quick checks.

    A scan patch is one pattern whose Bragg-disk intensities vary smoothly over the
    frames (as they do with the probe position in a crystal); a raster scan
    (``n_grids`` of ``grid_size x grid_size``) the same, along both scan axes.
    """
    zero = (size / 2.0, size / 2.0)  # the abTEM convention: half a pixel off the geometric centre
    n_groups = -(-n_patterns // per_group)
    kinds_g = [_kind_at(g, amorphous_fraction) for g in range(n_groups)]
    single, kind, group = [], [], []
    for g in range(n_groups):
        base_rng = np.random.default_rng([seed, g])
        for _ in range(per_group):
            single.append(_synthetic_pattern(kinds_g[g], size, zero, np.random.default_rng(base_rng.integers(2**31))))
            kind.append(kinds_g[g])
            group.append(g)
    single, kind, group = single[:n_patterns], kind[:n_patterns], group[:n_patterns]
    scans, skind = [], []
    for m in range(n_scans):
        k = _kind_at(m, amorphous_fraction)
        p0 = _synthetic_pattern(k, size, zero, np.random.default_rng([seed, 1000 + m]))
        p1 = _synthetic_pattern(k, size, zero, np.random.default_rng([seed, 2000 + m]))
        t = 0.5 + 0.5 * np.sin(np.linspace(0, 2 * np.pi, scan_frames, endpoint=False))[:, None, None]
        scans.append(((1 - 0.3 * t) * p0 + 0.3 * t * p1).astype(np.float32))
        skind.append(k)
    return EvalSet(
        single=np.stack(single),
        single_zero=np.broadcast_to(np.float32(zero), (len(single), 2)).copy(),
        single_kind=np.asarray(kind),
        single_group=np.asarray(group),
        single_id=np.asarray([f"synthetic:{g}" for g in group]),
        scans=np.stack(scans),
        scans_zero=np.broadcast_to(np.float32(zero), (n_scans, 2)).copy(),
        scans_kind=np.asarray(skind),
        scans_id=np.asarray([f"synthetic-scan:{m}" for m in range(n_scans)]),
        source="synthetic",
        info={"size": size, "seed": seed},
        **_synthetic_grids(n_grids, grid_size, size, zero, amorphous_fraction, seed),
    )


def _synthetic_grids(n: int, side: int, size: int, zero, amorphous_fraction: float, seed: int) -> dict:
    """:class:`EvalSet` ``grids`` fields of ``n`` analytic raster scans (two patterns
    mixed smoothly over the scan)."""
    if not n:
        return {}
    cubes, kinds = [], []
    u, v = np.meshgrid(np.linspace(0, 2 * np.pi, side, endpoint=False), np.linspace(0, 2 * np.pi, side, endpoint=False), indexing="ij")
    t = (0.5 + 0.25 * (np.sin(u) + np.cos(v)))[..., None, None]
    for m in range(n):
        k = _kind_at(m, amorphous_fraction)
        p0 = _synthetic_pattern(k, size, zero, np.random.default_rng([seed, 3000 + m]))
        p1 = _synthetic_pattern(k, size, zero, np.random.default_rng([seed, 4000 + m]))
        cubes.append(((1 - 0.3 * t) * p0 + 0.3 * t * p1).astype(np.float32))
        kinds.append(k)
    return {
        "grids": np.stack(cubes),
        "grids_zero": np.broadcast_to(np.float32(zero), (n, 2)).copy(),
        "grids_kind": np.asarray(kinds),
        "grids_id": np.asarray([f"synthetic-grid:{m}" for m in range(n)]),
    }


def load_or_make(
    data=None,
    generate: int | None = None,
    synthetic: bool = False,
    cfg: EvalSetConfig | None = None,
    workers: int = 1,
    max_patterns: int | None = None,
    max_scans: int | None = None,
    progress: bool = True,
) -> EvalSet:
    """The set an evaluation runs on: read ``data``, or simulate ``generate`` patterns into
    ``data`` with abTEM first, or make an analytic one (``synthetic``)."""
    if synthetic:
        return make_synthetic(n_patterns=max_patterns or 16, n_scans=max_scans or 2, n_grids=2)
    if data is None:
        raise ValueError("give a test-set directory (--data), or --synthetic")
    root = Path(data)
    if generate:
        base = cfg or EvalSetConfig()
        cfg = dataclasses.replace(base, n_patterns=int(generate))
        generate_abtem(root, cfg, workers=workers, progress=progress)
    if not (root / "single" / "manifest.csv").exists():
        raise ValueError(f"{root} holds no evaluation set: create one with --generate N (abTEM) or use --synthetic")
    return load_abtem(root, max_patterns, max_scans)
