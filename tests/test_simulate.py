"""abTEM training-data simulation on tiny grids: the zero angle, shards, manifest, resume."""

import argparse
import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("abtem")
pytest.importorskip("ase")

from _helpers import TINY_SIM as TINY

from prenet_jax import data as sim  # noqa: E402
from prenet_jax import data as st  # noqa: E402
from prenet_jax.internal import add_simulate_parser, run_simulate_cli  # noqa: E402


def _tiny(**kw) -> sim.SimulationConfig:
    base = dict(structure_ids=("compound:MgO-rocksalt", "ase:Al", "amorphous:a-Si:000"), n_patterns=12, tasks_per_shard=1, **TINY)
    base.update(kw)
    return sim.SimulationConfig(**base)


def test_wavelength_matches_abtem():
    from abtem.core.energy import energy2wavelength

    for kv in (60, 80, 120, 200, 300):
        assert sim.wavelength(kv * 1e3) == pytest.approx(energy2wavelength(kv * 1e3), rel=1e-6)
    assert sim.wavelength(200e3) == pytest.approx(0.02508, abs=1e-5)


def test_vacuum_probe_disk_is_centred_on_the_zero_angle():
    """The bare probe's disk (any energy, semi-angle, defocus, position) is centred at the
    claimed zero angle (S/2, S/2) to 0.01 px, and its radius is alpha L / lambda."""
    size = 64
    cfg = sim.SimulationConfig(
        structure_ids=("vacuum",),
        n_patterns=4,
        pattern_size=size,
        gpts=96,
        extent_a=(20.0, 30.0),
        disk_radius_px=(6.0, 14.0),
        semiangle_mrad=(0.5, 40.0),
        thickness_a=(4.0, 8.0),
        defocus_a=(-100.0, 100.0),
    )
    r, c = np.mgrid[:size, :size]
    for index in range(3):
        task = sim.draw_task(cfg, ["vacuum"], index)
        pats, metas = sim.simulate_task(task, cfg)
        for p, m in zip(pats, metas):
            p = p.astype(np.float64)
            com = np.array([(p * r).sum(), (p * c).sum()]) / p.sum()
            np.testing.assert_allclose(com, m["zero_angle"], atol=0.01)
            np.testing.assert_allclose(m["zero_angle"], [size / 2, size / 2])
            radius = math.sqrt((p > 0.5 * p.max()).sum() / math.pi)
            assert radius == pytest.approx(m["disk_radius_px"], abs=1.0)
            assert m["total_intensity"] == pytest.approx(1.0, abs=1e-3)


def test_tasks_are_deterministic_and_physical():
    cfg = _tiny()
    ids = cfg.structures()
    a, b = sim.draw_task(cfg, ids, 5), sim.draw_task(cfg, ids, 5)
    assert a == b and sim.draw_task(cfg, ids, 6) != a
    for i in range(50):
        t = sim.draw_task(cfg, ids, i)
        lam = sim.wavelength(t.energy_ev)
        radius = t.semiangle_mrad * 1e-3 * t.extent_a / lam
        assert cfg.disk_radius_px[0] <= radius <= cfg.disk_radius_px[1] + 1e-9
        assert t.energy_ev / 1e3 in cfg.energies_kv
        assert len(t.thicknesses_a) == cfg.thicknesses_per_task and len(t.positions_a) == cfg.positions_per_task
        if t.structure_id.startswith("amorphous"):
            assert t.orientation == "isotropic"


def test_shard_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = {
        "patterns": rng.random((3, 32, 32), dtype=np.float32),
        "meta": {
            "uid": np.array(["a", "b", "c"]),
            "energy_ev": np.array([6e4, 2e5, 3e5]),
            "zone_axis": np.array([[0, 0, 1], [1, 1, 0], [0, 0, 0]], np.int32),
            "formula": np.array(["MgO", "Al", "Si1"], dtype=object),
        },
        "dataset": "patterns",
        "shard": 0,
    }
    path = sim.write_shard(tmp_path / "patterns" / "shard-00000.h5", data, attrs={"note": "x"})
    assert not list(path.parent.glob(".*tmp*"))
    back = sim.read_shard(path)
    np.testing.assert_array_equal(back["patterns"], data["patterns"])
    for k, v in data["meta"].items():
        np.testing.assert_array_equal(back["meta"][k], v)
    assert back["attrs"]["note"] == "x" and back["attrs"]["n_patterns"] == 3


def test_mantissa_rounding_bound():
    x = np.random.default_rng(1).lognormal(-12, 4, 10_000).astype(np.float32)
    for bits in (8, 12, 16):
        y = sim.round_mantissa(x, bits)
        assert np.max(np.abs(y - x) / x) <= 2.0 ** -(bits + 1) * (1 + 1e-6)
    np.testing.assert_array_equal(sim.round_mantissa(x, 23), x)


def _run(cfg, out, **kw):
    return sim.run_simulation(cfg, out, progress=False, **kw)


def test_run_resumes_without_duplicates_or_losses(tmp_path):
    cfg = _tiny(ellipse_samples=2, ellipse_orientations=2, ellipse_rotations=4, ellipse_per_shard=1, ellipse_thickness_a=(4.0, 8.0))
    full = _run(cfg, tmp_path / "full")
    assert full["complete"] and full["total"] == 12 + 2

    part = tmp_path / "part"
    first = _run(cfg, part, max_shards=2)  # "interrupted" after two shards
    assert not first["complete"] and first["total"] == 8
    # a writer killed mid-shard leaves a temporary file behind; resume must ignore and remove it
    (part / "patterns" / ".shard-00002.h5.tmp-999").write_bytes(b"partial")
    second = _run(cfg, part)
    assert second["complete"] and second["written"] == 14 - 8
    assert not list((part / "patterns").glob(".*tmp*"))

    rows_full = sim.read_manifest(tmp_path / "full")
    rows_part = sim.read_manifest(part)
    uids = [r["uid"] for r in rows_part]
    assert len(uids) == len(set(uids)) == 14
    assert uids == [r["uid"] for r in rows_full]
    for rf, rp in zip(rows_full, rows_part):
        a = sim.read_shard(tmp_path / "full" / rf["shard"])["patterns"][int(rf["index"])]
        b = sim.read_shard(part / rp["shard"])["patterns"][int(rp["index"])]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)

    # nothing left to do: a rerun writes nothing
    assert _run(cfg, part)["written"] == 0
    # different settings in the same directory are refused with a way out
    with pytest.raises(ValueError, match="different settings.*overwrite"):
        _run(dataclasses.replace(cfg, seed=1), part)
    with pytest.raises(ValueError, match="--resume"):
        _run(cfg, part, resume=False)


def test_dask_scheduler_path(tmp_path):
    """Shards computed on dask.distributed workers come back and are written by the client."""
    distributed = pytest.importorskip("distributed")
    cfg = _tiny(n_patterns=8)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        res = _run(cfg, tmp_path / "dask", scheduler=cluster.scheduler_address)
    assert res["complete"] and res["written"] == 8
    local = _run(cfg, tmp_path / "local")
    for a, b in zip(sim.read_manifest(tmp_path / "dask"), sim.read_manifest(tmp_path / "local")):
        assert a["uid"] == b["uid"] and a["structure_id"] == b["structure_id"] and a["energy_ev"] == b["energy_ev"]
    assert local["written"] == 8


def test_manifest_splits_by_structure_and_metadata(tmp_path):
    cfg = _tiny(split_fractions=(0.5, 0.25, 0.25))
    _run(cfg, tmp_path)
    rows = sim.read_manifest(tmp_path, "patterns")
    assert len(rows) == 12
    for r in rows:
        assert r["split"] == st.split_of(r["structure_id"], cfg.split_fractions)
        assert r["zero_angle"] == "16.0 16.0"
        assert float(r["disk_radius_px"]) == pytest.approx(
            float(r["semiangle_mrad"]) * 1e-3 * float(r["extent_a"]) / float(r["wavelength_a"])
        )
    kinds = {r["structure_id"]: r["kind"] for r in rows}
    assert kinds["amorphous:a-Si:000"] == "amorphous" and kinds["ase:Al"] == "crystal"
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["config"]["n_patterns"] == 12 and run["structures"] == list(cfg.structure_ids)
    structures = (tmp_path / "structures.csv").read_text().splitlines()
    assert len(structures) == 1 + 3
    store = sim.PatternStore(tmp_path, split=None)
    x, z = next(store.batches(4))
    assert x.shape == (4, 32, 32) and x.dtype == np.float32 and np.all(z == 16.0)
    x2, _ = store.get([5, 1, 5])
    np.testing.assert_array_equal(x2[0], x2[2])
    store.close()
    # the figure command draws from a finished run
    from prenet_jax.data import figure_from_dataset

    png = figure_from_dataset(tmp_path, tmp_path / "fig.png", augmented=2)
    assert png.stat().st_size > 10_000


def test_structure_sources():
    ids = st.select_structures(1024, seed=0)
    assert len(set(ids)) == 1024
    n_am = sum(i.startswith("amorphous:") for i in ids)
    assert n_am == 102
    assert len(st.catalogue()) >= 1000
    splits = [st.split_of(i) for i in ids]
    assert 0.7 < splits.count("train") / 1024 < 0.9
    # pyxtal crystals rebuild identically from the id
    a = st.build_structure("pyxtal:00003")
    st.build_structure.cache_clear()
    b = st.build_structure("pyxtal:00003")
    np.testing.assert_allclose(a.atoms.positions, b.atoms.positions)
    assert a.spacegroup == b.spacegroup and a.formula == b.formula
    # amorphous boxes honour their density and minimum distance
    am = st.build_structure("amorphous:a-SiO2:000")
    assert am.density == pytest.approx(2.20, rel=0.01)
    box = st.cut_box(am, 20.0, 10.0, None, np.random.default_rng(0))
    assert len(box) == pytest.approx(2.20 / 1.66054 / 20.03 * 4000, rel=0.1)
    with pytest.raises(ValueError, match="unknown structure source"):
        st.build_structure("nist:Si")


def test_zone_axis_rotation_puts_the_axis_on_the_beam():
    cell = np.asarray(st.build_structure("compound:TiO2-rutile").atoms.cell)
    for uvw in [(0, 0, 1), (1, 1, 0), (1, 0, 1)]:
        rot = st.zone_axis_rotation(cell, uvw, inplane=0.4)
        d = np.asarray(uvw, float) @ cell
        np.testing.assert_allclose(rot @ d / np.linalg.norm(d), [0, 0, 1], atol=1e-12)
        np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)


def test_cli_parser_and_config_errors(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    add_simulate_parser(sub)
    args = parser.parse_args(
        [
            "simulate",
            "-o",
            str(tmp_path / "cli"),
            "--patterns",
            "4",
            "--structure-ids",
            "ase:Al",
            "--pattern-size",
            "32",
            "--gpts",
            "48",
            "--extent",
            "12",
            "20",
            "--thickness",
            "4",
            "8",
            "--disk-radius-px",
            "2",
            "6",
            "--semiangle-mrad",
            "0.5",
            "40",
            "--no-progress",
        ]
    )
    assert args.func is run_simulate_cli and args.resume is True
    assert args.func(args) == 0
    assert len(sim.read_manifest(tmp_path / "cli")) == 4
    with pytest.raises(ValueError, match="anti-aliasing cutoff"):
        sim.SimulationConfig(pattern_size=256, gpts=256)
    with pytest.raises(ValueError, match="sum"):
        sim.SimulationConfig(split_fractions=(0.5, 0.1, 0.1))
