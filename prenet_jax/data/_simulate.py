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

Modules
-------
``_sim_config.py`` (the configuration), ``_sim_engine.py`` (tasks and abTEM),
``_sim_store.py`` (shards, manifest, :class:`PatternStore`); this one runs them
(:func:`run_simulation`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .._util import atomic_write_text, versions
from ._sim_config import ELLIPSE, FORMAT, FORMAT_VERSION, PATTERNS, SimulationConfig
from ._sim_engine import simulate_shard
from ._sim_store import _manifest_rows, _shard_ok, _shard_path, _write_manifest, _write_structures, read_shard, write_shard

__all__ = ["run_simulation"]


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
