"""Readers (HDF5, py4DSTEM EMD 1.0, .npy, RosettaSciIO) and the EMD 1.0 writer."""

import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.io import EMDWriter, InputError, open_input, plan_blocks, read_result
from prenet_jax.preprocess import ellipse_from_py4dstem, ellipse_to_py4dstem


def _cube(shape=(3, 4, 16, 20), dtype=np.float32, seed=0):
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


def write_py4dstem_like(path, cube, name="experiment", q_pixel=0.025, extra_4d=True):
    """An EMD 1.0 file as py4DSTEM 0.14 writes it, written with plain h5py."""
    with h5py.File(path, "w") as f:
        f.attrs["emd_group_type"] = "file"
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        f.attrs["UUID"] = "0"
        f.attrs["authoring_program"] = "emdfile"
        f.attrs["authoring_user"] = ""
        root = f.create_group(f"{name}_root")
        root.attrs["emd_group_type"] = "root"
        root.attrs["python_class"] = "Root"
        md = root.create_group("metadatabundle")
        md.attrs["emd_group_type"] = "metadatabundle"
        cal = md.create_group("calibration")
        cal.attrs["emd_group_type"] = "metadata"
        cal.attrs["python_class"] = "Calibration"
        for k, v in (("Q_pixel_size", q_pixel), ("R_pixel_size", 1.5)):
            d = cal.create_dataset(k, data=v)
            d.attrs["type"] = b"number"
        for k, v in (("Q_pixel_units", "A^-1"), ("R_pixel_units", "nm")):
            d = cal.create_dataset(k, data=v.encode())
            d.attrs["type"] = b"string"
        node = root.create_group(name)
        node.attrs["emd_group_type"] = "array"
        node.attrs["python_class"] = "DataCube"
        node.create_dataset("data", data=cube, chunks=(1, 2) + cube.shape[2:], compression="gzip")
        node["data"].attrs["units"] = "pixel intensity"
        for n, dn in enumerate(("Rx", "Ry", "Qx", "Qy")):
            d = node.create_dataset(f"dim{n}", data=np.array([0.0, 1.0]))
            d.attrs["name"] = dn
            d.attrs["units"] = "pixels"
        if extra_4d:  # a second 4-D array in the tree (not a DataCube): must not confuse the pick
            other = node.create_group("virtual_stack")
            other.attrs["emd_group_type"] = "array"
            other.attrs["python_class"] = "Array"
            other.create_dataset("data", data=np.zeros((2, 2, 2, 2), np.float32))


# ----------------------------------------------------------------------------- readers


def test_py4dstem_layout_written_with_h5py_is_detected_and_read(tmp_path):
    cube = _cube()
    path = tmp_path / "scan.h5"
    write_py4dstem_like(path, cube)
    with open_input(path) as src:
        assert src.kind == "emd"
        assert src.dataset == "/experiment_root/experiment/data"
        assert src.shape == cube.shape and src.dtype == cube.dtype
        assert src.scan_chunks == (1, 2)
        np.testing.assert_array_equal(src.read_block(0, 3, 0, 4), cube)
        np.testing.assert_array_equal(src.read_block(1, 3, 2, 4), cube[1:3, 2:4])
        idx = np.array([0, 3, 5, 6, 11])
        np.testing.assert_array_equal(src.read_frames(idx), cube.reshape(12, 16, 20)[idx])
        assert src.calibration == {"Q_pixel_size": 0.025, "R_pixel_size": 1.5, "Q_pixel_units": "A^-1", "R_pixel_units": "nm"}
        # the view the pipeline's pass 0 reads through
        view = src.frames()
        assert view.shape == (12, 16, 20)
        np.testing.assert_array_equal(view[2:5], cube.reshape(12, 16, 20)[2:5])


def test_hdf5_picks_the_only_4d_dataset_or_asks(tmp_path):
    cube = _cube()
    p = tmp_path / "a.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("meta/image", data=np.zeros((5, 5)))
        f.create_dataset("entry/data/data", data=cube)
    with open_input(p) as src:
        assert src.dataset == "/entry/data/data" and src.kind == "hdf5"
    with h5py.File(p, "a") as f:
        f.create_dataset("copy", data=cube)
    with pytest.raises(InputError, match="several 4-D datasets.*--dataset"):
        open_input(p)
    with open_input(p, dataset="/copy") as src:
        np.testing.assert_array_equal(src.read_block(0, 3, 0, 4), cube)
    with open_input(p, dataset="entry/data") as src:  # an EMD-style group: its 'data'
        assert src.dataset == "/entry/data/data"
    with pytest.raises(InputError, match="no dataset 'nope'.*entry/data/data"):
        open_input(p, dataset="nope")


def test_non_4d_data_is_refused_with_the_fix(tmp_path):
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("image", data=np.zeros((32, 32), np.float32))
        f.create_dataset("stack", data=_cube((12, 16, 16)))
        f.create_dataset("phases", data=np.zeros((2, 2, 8, 8), np.complex64))
    with pytest.raises(InputError, match="no 4-D dataset.*--scan"):
        open_input(p)
    with pytest.raises(InputError, match=r"2-D\); preprocess needs 4-D"):
        open_input(p, dataset="image")
    with pytest.raises(InputError, match="stack of 12 frames.*--scan"):
        open_input(p, dataset="stack")
    with pytest.raises(InputError, match="RX\\*RY = 12"):
        open_input(p, dataset="stack", scan=(5, 5))
    with open_input(p, dataset="stack", scan=(3, 4)) as src:  # a stack viewed as a cube
        assert src.shape == (3, 4, 16, 16)
        stack = _cube((12, 16, 16))
        np.testing.assert_array_equal(src.read_block(0, 3, 0, 4), stack.reshape(3, 4, 16, 16))
        np.testing.assert_array_equal(src.read_block(1, 2, 1, 3), stack.reshape(3, 4, 16, 16)[1:2, 1:3])
        np.testing.assert_array_equal(src.read_frames(np.array([0, 1, 7])), stack[[0, 1, 7]])
    with pytest.raises(InputError, match="dtype"):
        open_input(p, dataset="phases")


def test_npy_is_read_lazily_in_blocks(tmp_path):
    cube = _cube((4, 5, 8, 12), np.uint16)
    p = tmp_path / "c.npy"
    np.save(p, cube)
    with open_input(p) as src:
        assert src.kind == "npy" and src.shape == cube.shape and src.dtype == np.uint16
        np.testing.assert_array_equal(src.read_block(0, 4, 0, 5), cube)
        np.testing.assert_array_equal(src.read_block(1, 3, 2, 4), cube[1:3, 2:4])
        idx = np.array([0, 1, 2, 9, 13, 19])
        np.testing.assert_array_equal(src.read_frames(idx), cube.reshape(20, 8, 12)[idx])
    np.save(tmp_path / "f.npy", np.asfortranarray(cube))
    with pytest.raises(InputError, match="Fortran order"):
        open_input(tmp_path / "f.npy")
    (tmp_path / "t.npy").write_bytes((tmp_path / "c.npy").read_bytes()[:500])
    with pytest.raises(InputError, match="t.npy is truncated: its header promises 3968 bytes"):
        open_input(tmp_path / "t.npy")
    with pytest.raises(InputError, match="--dataset applies to HDF5"):
        open_input(p, dataset="x")


def test_missing_unreadable_and_unknown_files(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file"):
        open_input(tmp_path / "nothere.h5")
    with pytest.raises(InputError, match="is a folder"):
        open_input(tmp_path)
    (tmp_path / "fake.h5").write_bytes(b"this is not hdf5 at all")
    with pytest.raises(InputError, match="not an HDF5 file"):
        open_input(tmp_path / "fake.h5")
    (tmp_path / "data.xyz").write_bytes(b"\0" * 64)
    monkeypatch.setitem(sys.modules, "rsciio", None)  # as if the io extra were not installed
    with pytest.raises(InputError, match=r"pip install 'prenet-jax\[io\]'"):
        open_input(tmp_path / "data.xyz")
    monkeypatch.undo()
    if os.geteuid() != 0:  # root reads everything
        p = tmp_path / "locked.h5"
        p.write_bytes(b"x")
        p.chmod(0)
        with pytest.raises(InputError, match="permission denied"):
            open_input(p)


def test_detector_format_through_rosettasciio(tmp_path):
    rsciio_tvips = pytest.importorskip("rsciio.tvips")
    pytest.importorskip("dask")
    data = _cube((3, 4, 32, 32), np.uint16, seed=2)
    axes = [dict(name=n, size=s, scale=0.1, offset=0.0, units="1/nm", navigate=False) for n, s in (("ky", 32), ("kx", 32))]
    axes = [
        dict(name="y", size=3, scale=1.0, offset=0.0, units="nm", navigate=True),
        dict(name="x", size=4, scale=1.0, offset=0.0, units="nm", navigate=True),
    ] + axes
    sig = dict(
        data=data,
        axes=axes,
        metadata={"General": {"title": "t"}, "Signal": {"signal_type": "diffraction"}},
        original_metadata={},
        attributes={"_lazy": False},
    )
    rsciio_tvips.file_writer(str(tmp_path / "scan.tvips"), sig)
    path = next(tmp_path.glob("scan*.tvips"))  # the writer numbers the file: scan_000.tvips
    with pytest.raises(InputError, match="--scan"):  # TVIPS stores a stack
        open_input(path)
    with open_input(path, scan=(3, 4)) as src:
        assert src.kind == "rsciio:TVIPS" and src.shape == (3, 4, 32, 32)
        np.testing.assert_array_equal(src.read_block(0, 3, 0, 4), data)
        np.testing.assert_array_equal(src.read_frames(np.array([1, 5, 6, 11])), data.reshape(12, 32, 32)[[1, 5, 6, 11]])


@pytest.mark.parametrize("in_chunks,col_multiple,target", [((1, 7), 3, 10_000), ((4, 4), 2, 1_000_000), ((1, 23), 1, 50), ((3, 5), 5, 700)])
def test_block_plan_covers_the_scan_once_aligned(in_chunks, col_multiple, target):
    shape = (10, 23, 4, 4)
    blocks = plan_blocks(shape, in_chunks, col_multiple, frame_bytes=64, target_bytes=target)
    seen = np.zeros(shape[:2], int)
    for i0, i1, j0, j1 in blocks:
        seen[i0:i1, j0:j1] += 1
        assert i0 % in_chunks[0] == 0
        assert j0 % math.lcm(in_chunks[1], col_multiple) == 0 or j0 == 0
        assert j1 == shape[1] or (j1 - j0) % col_multiple == 0
    assert (seen == 1).all()


# ----------------------------------------------------------------------------- writer


def _write(path, cube, **kw):
    with EMDWriter(path, cube.shape, cube.dtype, **kw) as w:
        cc = w.chunk_cols
        for j0 in range(0, cube.shape[1], 2 * cc):  # blocks of two chunk columns
            w.write_block(0, j0, cube[:, j0 : j0 + 2 * cc])
        w.write_metadata(
            {"Q_pixel_size": 0.5, "qx0": np.full(cube.shape[:2], 7.5)},
            {"note": "hi", "n": 3, "x": 1.5, "flags": np.zeros(cube.shape[:2], np.uint8), "none": None, "ok": True, "names": ["a", "b"]},
        )
        assert path.exists() == bool(kw.get("overwrite"))  # nothing at the final name before commit
        w.commit()


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_writer_layout_is_emd_1_0_as_py4dstem_reads_it(tmp_path, compression):
    cube = _cube((3, 7, 64, 48), np.float32)  # chunk columns do not divide Ry: padded edge chunks
    path = tmp_path / "out.h5"
    _write(path, cube, compression=compression)
    with h5py.File(path, "r") as f:
        assert f.attrs["emd_group_type"] == "file" and f.attrs["version_major"] == 1 and f.attrs["version_minor"] == 0
        root = f["datacube_root"]
        assert root.attrs["emd_group_type"] == "root" and root.attrs["python_class"] == "Root"
        assert root["metadatabundle"].attrs["emd_group_type"] == "metadatabundle"
        cal = root["metadatabundle/calibration"]
        assert cal.attrs["emd_group_type"] == "metadata" and cal.attrs["python_class"] == "Calibration"
        assert cal["Q_pixel_size"].attrs["type"] in ("number", b"number") and cal["qx0"].attrs["type"] in ("array", b"array")
        assert [cal["_target_paths"][str(i)][()] for i in range(cal["_target_paths"].attrs["length"])] == [b"/datacube"]
        node = root["datacube"]
        assert node.attrs["emd_group_type"] == "array" and node.attrs["python_class"] == "DataCube"
        ds = node["data"]
        assert ds.shape == cube.shape and ds.dtype == np.float32
        assert ds.chunks[0] == 1 and ds.chunks[2:] == (64, 48)
        assert ds.compression == ("gzip" if compression == "gzip" else None)
        np.testing.assert_array_equal(ds[()], cube)  # direct chunk writes decode through HDF5's own filters
        assert [node[f"dim{n}"].attrs["name"] for n in range(4)] == ["Rx", "Ry", "Qx", "Qy"]
        assert node["dim2"][()].tolist() == [0.0, 0.5]
    r = read_result(path)
    assert r["preprocessing"]["note"] == "hi" and r["preprocessing"]["n"] == 3 and r["preprocessing"]["none"] is None
    assert r["preprocessing"]["names"] == ["a", "b"] and r["preprocessing"]["ok"] is True
    assert r["calibration"]["qx0"].shape == (3, 7)
    assert not list(tmp_path.glob(".*partial"))


def test_writer_is_atomic_and_refuses_existing_output(tmp_path):
    cube = _cube((2, 2, 16, 16))
    path = tmp_path / "out.h5"
    with pytest.raises(RuntimeError):
        with EMDWriter(path, cube.shape, cube.dtype) as w:
            w.write_block(0, 0, cube[:1])
            raise RuntimeError("interrupted")
    assert not path.exists() and list(tmp_path.iterdir()) == []  # no output, no temporary file
    _write(path, cube)
    with pytest.raises(InputError, match="exists.*--overwrite"):
        EMDWriter(path, cube.shape, cube.dtype)
    _write(path, cube * 2, overwrite=True)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["datacube_root/datacube/data"][()], cube * 2)
    with pytest.raises(InputError, match="does not exist"):
        EMDWriter(tmp_path / "nodir" / "x.h5", cube.shape, cube.dtype)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600


# ----------------------------------------------------------------------------- py4DSTEM itself

_PY4DSTEM_CHECK = """
import sys, numpy as np, py4DSTEM
dc = py4DSTEM.read(sys.argv[1])
assert type(dc).__name__ == "DataCube", type(dc)
assert dc.data.shape == (3, 7, 64, 48), dc.data.shape
assert dc.calibration.get_Q_pixel_size() == 0.5
assert np.allclose(dc.calibration.get_qx0(), 7.5)
print("py4DSTEM ok", py4DSTEM.__version__)
"""


def test_py4dstem_reads_the_output(tmp_path):
    cube = _cube((3, 7, 64, 48), np.float32)
    path = tmp_path / "out.h5"
    _write(path, cube)
    other = os.environ.get("PRENET_PY4DSTEM_PYTHON")  # an interpreter with py4DSTEM (its numpy pin may clash with ours)
    if other:
        out = subprocess.run([other, "-c", _PY4DSTEM_CHECK, str(path)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "py4DSTEM ok" in out.stdout
        return
    py4DSTEM = pytest.importorskip("py4DSTEM")
    dc = py4DSTEM.read(str(path))
    assert type(dc).__name__ == "DataCube"
    np.testing.assert_array_equal(dc.data, cube)
    assert np.allclose(dc.calibration.get_qx0(), 7.5)


# ----------------------------------------------------------------------------- conventions


@pytest.mark.parametrize("ratio,angle_deg", [(1.15, 25.0), (1.03, 100.0), (1.2, 0.0), (1.07, 90.0)])
def test_ellipse_to_py4dstem_matches_its_geometry(ratio, angle_deg):
    ell = pj.Ellipse(ratio, math.radians(angle_deg))
    radius = 30.0
    a, b, theta = ellipse_to_py4dstem(ell, radius)
    assert 0 <= theta < math.pi and a >= b and math.isclose(a * b, radius**2) and math.isclose(a / b, ratio)
    # py4DSTEM: the a-axis points along (qx, qy) = (cos theta, sin theta), qx = row, qy = col.
    # That point, a px from the centre, lies on our observed ellipse: |D^-1 p| = radius.
    p = a * np.array([math.cos(theta), math.sin(theta)])
    assert np.linalg.norm(np.linalg.solve(ell.matrix(), p)) == pytest.approx(radius, rel=1e-9)
    q = b * np.array([-math.sin(theta), math.cos(theta)])
    assert np.linalg.norm(np.linalg.solve(ell.matrix(), q)) == pytest.approx(radius, rel=1e-9)
    back = ellipse_from_py4dstem(a, b, theta)
    assert back.ratio == pytest.approx(ratio) and back.angle == pytest.approx(ell.angle, abs=1e-12)


def test_pass0_reads_through_the_view_and_skips_nonfinite_frames(tmp_path):
    d = pj.synthetic_cube(scan=(4, 4), shape=(48, 48), radius=8.0, ellipse=pj.Ellipse(1.1, 0.3), jitter=0.5, seed=6)
    cube = d["cube"].copy()
    cube[0, 0, 3, 3] = np.nan  # sampled by pass 0: must be left out, not raise
    cube[2, 1] = np.inf
    np.save(tmp_path / "c.npy", cube)
    with open_input(tmp_path / "c.npy") as src:
        view = src.frames()
        assert not view[np.array([0, 9])].any(axis=(1, 2)).any()  # non-finite frames read as empty
        ell, mean = pj.Pipeline.classical(batch_size=8).calibrate(view, 16)
    assert np.isfinite(mean).all()
    assert ell.ratio == pytest.approx(1.1, abs=0.02)


# ----------------------------------------------------------------------------- the format registry


def test_open_input_consults_the_one_registry(tmp_path, monkeypatch):
    from prenet_jax import io

    assert [f.name for f in io.FORMATS] == ["hdf5", "npy", "rsciio"]
    cube = _cube((2, 3, 8, 8))
    path = tmp_path / "scan.toy"
    path.write_bytes(b"TOYCUBE\0" + cube.tobytes())

    def open_toy(p, dataset, scan):
        np.save(tmp_path / "as.npy", np.frombuffer(p.read_bytes()[8:], np.float32).reshape(2, 3, 8, 8))
        return io.open_input(tmp_path / "as.npy", dataset, scan)

    monkeypatch.setattr(io._formats, "FORMATS", list(io.FORMATS))
    io.register_format(io.Format("toy", (".toy",), lambda p, head: head == b"TOYCUBE\0", open_toy, "{path} is no toy cube"))
    assert [f.name for f in io._formats.FORMATS] == ["hdf5", "npy", "toy", "rsciio"]  # before the catch-all
    with open_input(path) as src:
        np.testing.assert_array_equal(src.read_block(0, 2, 0, 3), cube)
    (tmp_path / "bad.toy").write_bytes(b"NOTATOY!")
    with pytest.raises(InputError, match="bad.toy is no toy cube"):
        open_input(tmp_path / "bad.toy")


def test_the_face_has_what_the_old_readers_module_had():
    # io/_readers.py (one module for every reader and the writer) is gone: its public
    # names are all on the face, the same objects.
    import prenet_jax.io as io_face

    old = ["InputError", "OutputError", "output_error", "negative_error", "Source", "FrameView", "open_input", "sha256_file"]
    old += ["EMDWriter", "check_output_path", "read_result", "plan_blocks", "HDF5_SUFFIXES"]
    assert all(name in io_face.__all__ for name in old)
    assert io_face.open_input is open_input and io_face.EMDWriter is EMDWriter
