"""Readers on real recorded detector files (RosettaSciIO's test data, tests/data/real).

The files and their licence: tests/data/README.md. Merlin (.mib) and NanoMegas
(.blo) need the ``io`` extra (RosettaSciIO, scikit-image); the Dectris ARINA
master needs h5py and hdf5plugin (bitshuffle).
"""

import shutil
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import h5py
import numpy as np
import pytest
from _helpers import run_preprocess

import prenet_jax as pj
from prenet_jax.conventions import FLAG_SATURATED
from prenet_jax.io import InputError, open_input, read_result
from prenet_jax.preprocess import preprocess_file

REAL = Path(__file__).parent / "data" / "real"
MERLIN = REAL / "001_4x2_6bit.mib"
BLO = REAL / "test1.blo"
ARINA = REAL / "test_00_master.h5"
ARINA_FILES = ("test_00_master.h5", "test_00_data_000001.h5", "test_00.h5")

needs_rsciio = pytest.mark.skipif(find_spec("rsciio") is None, reason="needs RosettaSciIO (the io extra)")
needs_skimage = pytest.mark.skipif(find_spec("skimage") is None, reason="the .blo reader needs scikit-image (the io extra)")
needs_plugin = pytest.mark.skipif(find_spec("hdf5plugin") is None, reason="needs hdf5plugin (bitshuffle; the io extra)")


def test_the_real_files_are_small():
    assert sum(p.stat().st_size for p in REAL.iterdir()) < 1.5 * 2**20  # 1.0 MiB


# ----------------------------------------------------------------------------- Merlin


@needs_rsciio
def test_merlin_6bit_opens_with_its_counter_depth_as_saturation():
    with open_input(MERLIN) as src:
        assert src.kind == "rsciio:QuantumDetector"
        assert src.shape == (2, 4, 256, 256) and src.dtype == np.uint8
        assert src.saturation == 63.0
        assert src.saturation_from == "the Merlin counter depth 6"
        cube = src.read_block(0, 2, 0, 4)
    assert cube.max() == 63
    at_max = (cube == 63).sum(axis=(2, 3))
    assert at_max.min() > 1900 and at_max.max() < 2000  # a flat-topped direct disk: ~1,950 px per frame at 63


@pytest.mark.parametrize("depth, level", [("1", 1), ("6", 63), ("12", 4095), ("24", 2**24 - 1), (" 12 ", 4095)])
def test_merlin_counter_depth_to_level(depth, level):
    from prenet_jax.internal import rsciio_saturation

    sat, where = rsciio_saturation({"original_metadata": {"hdr_file": {"Counter Depth (number)": depth}}})
    assert sat == level and where == f"the Merlin counter depth {depth.strip()}"


def test_no_level_without_an_unambiguous_depth():
    from prenet_jax.internal import rsciio_saturation

    assert rsciio_saturation({"original_metadata": {"mib_properties": {"dynamic_range": "1 or 6-bit"}}}) == (None, None)
    assert rsciio_saturation({"original_metadata": {"mib_properties": {"dynamic_range": "12-bit"}}})[0] == 4095
    assert rsciio_saturation({"original_metadata": {}}) == (None, None)


@needs_rsciio
def test_merlin_preprocess_flags_every_frame_saturated(tmp_path):
    lines = []
    res = preprocess_file(MERLIN, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, log=lines.append)
    flags = np.asarray(res.flags).reshape(-1)
    assert flags.size == 8
    assert ((flags & FLAG_SATURATED) != 0).all()
    text = "\n".join(lines)
    assert "8 saturated" in text
    assert "(saturation level 63, from the Merlin counter depth 6)" in text
    assert "note: 8 frames reach the saturation level 63" in text
    rec = read_result(tmp_path / "out.h5")
    assert rec["shape"] == (2, 4, 256, 256)
    assert rec["preprocessing"]["saturation_level"] == 63.0


@needs_rsciio
def test_an_explicit_saturation_still_wins(tmp_path):
    lines = []
    res = preprocess_file(
        MERLIN, tmp_path / "out.h5", pipeline=pj.Pipeline.classical(), diagnostics=False, saturation=255, log=lines.append
    )
    assert not ((np.asarray(res.flags) & FLAG_SATURATED) != 0).any()
    assert "0 saturated" in "\n".join(lines) and "(saturation level 255, the uint8 maximum)" in "\n".join(lines)


# ----------------------------------------------------------------------------- NanoMegas blockfile


@needs_rsciio
@needs_skimage
def test_blockfile_opens_and_preprocesses(tmp_path):
    with open_input(BLO) as src:
        assert src.kind == "rsciio:Blockfile"
        assert src.shape == (3, 2, 144, 144) and src.dtype == np.uint8
        assert src.saturation is None  # the header gives no count limit: "auto" is the uint8 maximum
        assert src.read_block(0, 3, 0, 2).max() == 255
    rc, out, err = run_preprocess(BLO, "-o", tmp_path / "blo.h5", "--no-diagnostics")
    assert rc == 0, err
    assert "Traceback" not in err
    assert "input: test1.blo (rsciio:Blockfile): scan 3x2, frames 144x144 uint8" in out
    assert "(saturation level 255, the uint8 maximum)" in out
    assert read_result(tmp_path / "blo.h5")["shape"] == (3, 2, 144, 144)


# ----------------------------------------------------------------------------- EMPAD


@needs_rsciio
def test_empad_without_its_raw_file_names_it(tmp_path):
    shutil.copy(REAL / "map4x4.xml", tmp_path / "map4x4.xml")
    with pytest.raises(
        InputError, match=r"the data file scan_x4_y4.raw that map4x4.xml refers to is missing from .*: keep it next to map4x4.xml"
    ):
        open_input(tmp_path / "map4x4.xml")
    # with the raw file (128 x 130 float32 a frame: 2 rows of frame metadata) it opens
    raw = np.zeros((16, 130, 128), np.float32)
    raw[:, :128] = np.arange(16, dtype=np.float32)[:, None, None]
    raw.tofile(tmp_path / "scan_x4_y4.raw")
    with open_input(tmp_path / "map4x4.xml") as src:
        assert src.kind == "rsciio:EMPAD" and src.shape == (4, 4, 128, 128) and src.dtype == np.float32
        assert src.saturation is None
        cube = src.read_block(0, 4, 0, 4)
    np.testing.assert_array_equal(cube[:, :, 0, 0], np.arange(16).reshape(4, 4))  # frames row-major over the scan


# ----------------------------------------------------------------------------- Dectris ARINA


def _copy(tmp_path: Path, names=ARINA_FILES) -> Path:
    for n in names:
        shutil.copy(REAL / n, tmp_path / n)
    return tmp_path / "test_00_master.h5"


@needs_plugin
def test_arina_master_opens_through_its_external_link():
    with open_input(ARINA) as src:
        assert src.kind == "hdf5:dectris"
        assert src.dataset == "/entry/data/data_000001"
        assert src.shape == (4, 4, 192, 192) and src.dtype == np.uint32
        assert src.saturation == 8352.0 and "saturation_value 8352" in src.saturation_from
        notes = " ".join(src.notes)
        assert "scan 4x4 from the ARINA metadata file test_00.h5" in notes
        assert "hold only zeros" in notes
        cube = src.read_block(0, 4, 0, 4)
    assert cube.shape == (4, 4, 192, 192) and not cube.any()


@needs_plugin
def test_arina_without_its_metadata_file_is_taken_square_and_says_so(tmp_path):
    master = _copy(tmp_path, ARINA_FILES[:2])
    with open_input(master) as src:
        assert src.shape == (4, 4, 192, 192)
        assert any("taken as a square scan 4x4; give --scan RX,RY" in n for n in src.notes)
    with open_input(master, scan=(2, 8)) as src:
        assert src.shape == (2, 8, 192, 192)
    with open_input(master, dataset="/entry/data/data_000001", scan=(8, 2)) as src:
        assert src.shape == (8, 2, 192, 192) and src.dataset == "/entry/data/data_000001"


@needs_plugin
def test_arina_a_scan_that_cannot_be_inferred_asks_for_scan(tmp_path):
    """A master of 12 frames (not a square) and no metadata file."""
    import hdf5plugin

    master = tmp_path / "x_master.h5"
    with h5py.File(tmp_path / "x_data_000001.h5", "w") as f:
        f.create_dataset("entry/data/data", data=np.ones((12, 16, 16), np.uint16), chunks=(1, 16, 16), **hdf5plugin.Bitshuffle())
    with h5py.File(master, "w") as f:
        f["entry/definition"] = b"NXmx"
        f["entry/instrument/detector/description"] = b"Dectris EIGER2 Si 500K"
        f["entry/instrument/detector/bit_depth_readout"] = np.uint16(12)
        f["entry/data/data_000001"] = h5py.ExternalLink("x_data_000001.h5", "/entry/data/data")
    with pytest.raises(InputError, match=r"stack of 12 frames .* give it with --scan RX,RY \(RX\*RY = 12, e.g. --scan 3,4\)"):
        open_input(master)
    with open_input(master, scan=(3, 4)) as src:
        assert src.shape == (3, 4, 16, 16)
        assert src.saturation == 4095.0 and "bit_depth_readout 12" in src.saturation_from
        assert not any("zeros" in n for n in src.notes)


@needs_plugin
def test_arina_master_without_its_data_file_names_the_missing_file(tmp_path):
    master = _copy(tmp_path, ARINA_FILES[:1])
    with pytest.raises(InputError, match=r"links to /entry/data/data in test_00_data_000001.h5, which cannot be opened"):
        open_input(master)


@needs_plugin
def test_arina_preprocess_says_the_frames_are_empty(tmp_path):
    master = _copy(tmp_path)
    rc, out, err = run_preprocess(master, "-o", tmp_path / "out.h5", "--no-diagnostics")
    assert "Traceback" not in out + err
    assert "input: test_00_master.h5:/entry/data/data_000001 (hdf5:dectris): scan 4x4, frames 192x192 uint32" in out
    assert "the first, middle and last frames hold only zeros" in out
    if rc == 0:  # the run goes through: every frame flagged empty
        assert "16 empty" in out
        assert "(saturation level 8352, from the Dectris saturation_value 8352" in out
        res = read_result(tmp_path / "out.h5", data=True)
        assert res["shape"] == (4, 4, 192, 192) and not res["data"].any()
    else:  # or it stops with one clear line: nothing to estimate the ellipse on
        assert rc == 2 and err.startswith("error:") and "empty" in err, err
        assert not (tmp_path / "out.h5").exists()


def test_no_4d_listing_follows_external_links_and_gives_the_dataset_line(tmp_path):
    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f.create_dataset("entry/data/data", data=np.zeros((12, 8, 8), np.uint16))
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f["entry/title"] = b"a scan"
        f["entry/count_time"] = 0.001
        f["entry/mask"] = np.zeros((8, 8), np.uint8)
        f["entry/data/data_000001"] = h5py.ExternalLink("frames.h5", "/entry/data/data")
    with pytest.raises(InputError) as e:
        open_input(tmp_path / "scan.h5")
    msg = str(e.value)
    assert "holds no 4-D dataset" in msg
    assert "/entry/data/data_000001 (12, 8, 8) uint16" in msg and "/entry/mask (8, 8) uint8" in msg
    assert "count_time" not in msg  # scalars are not listed
    assert "--dataset /entry/data/data_000001 --scan 3,4" in msg
    with open_input(tmp_path / "scan.h5", dataset="/entry/data/data_000001", scan=(3, 4)) as src:
        assert src.shape == (3, 4, 8, 8) and src.dataset == "/entry/data/data_000001"


@needs_plugin
def test_the_arina_data_file_alone_gets_the_dataset_line():
    with pytest.raises(InputError, match=r"--dataset /entry/data/data --scan 4,4"):
        open_input(REAL / "test_00_data_000001.h5")


# ----------------------------------------------------------------------------- missing filters

_NO_PLUGIN = textwrap.dedent(
    """
    import sys
    sys.modules["hdf5plugin"] = None  # as if hdf5plugin were not installed: its filters never register
    from prenet_jax.io import InputError, open_input
    try:
        open_input(sys.argv[1], **eval(sys.argv[2]))
    except InputError as e:
        print("InputError:", e)
    else:
        print("opened")
    """
)


def _without_plugin(path, **kw) -> str:
    r = subprocess.run([sys.executable, "-c", _NO_PLUGIN, str(path), repr(kw)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_plugin
def test_a_missing_filter_is_named_with_its_package(tmp_path):
    import hdf5plugin

    path = tmp_path / "bs.h5"
    cube = np.arange(2 * 3 * 8 * 8, dtype=np.uint16).reshape(2, 3, 8, 8)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 1, 8, 8), **hdf5plugin.Bitshuffle())
    with open_input(path) as src:  # here hdf5plugin is loaded: it reads
        np.testing.assert_array_equal(src.read_block(0, 2, 0, 3), cube)
    out = _without_plugin(path)
    assert "InputError:" in out and "damaged" not in out
    assert "compressed with bitshuffle (HDF5 filter 32008)" in out
    assert "pip install hdf5plugin" in out
    # the real ARINA master, through its link
    out = _without_plugin(ARINA)
    assert "test_00_master.h5:/entry/data/data_000001 is compressed with bitshuffle (HDF5 filter 32008)" in out
    assert "pip install hdf5plugin" in out
    out = _without_plugin(ARINA, dataset="/entry/data/data_000001", scan=(4, 4))
    assert "bitshuffle (HDF5 filter 32008)" in out and "pip install hdf5plugin" in out


def test_filter_error_names_known_and_unknown_filters():
    from prenet_jax.internal import filter_error

    msg = str(filter_error("x.h5:/data", [(32004, "LZ4"), (32015, "Zstandard")]))
    assert "LZ4 (HDF5 filter 32004), Zstandard (HDF5 filter 32015)" in msg and "hdf5plugin" in msg
    msg = str(filter_error("x.h5:/data", [(40000, "my filter")]))
    assert "my filter (HDF5 filter 40000)" in msg and "HDF5_PLUGIN_PATH" in msg


def test_a_read_failure_of_a_filtered_dataset_names_the_filter(tmp_path, monkeypatch):
    """A filter lost after opening (or a chunk it cannot decode) is reported by name, not as damage."""
    from prenet_jax.io import _hdf5

    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.ones((2, 2, 8, 8), np.float32), chunks=(1, 1, 8, 8), compression="gzip")
    src = open_input(path)
    monkeypatch.setattr(_hdf5, "missing_filters", lambda ds: [(32008, "bitshuffle")])
    monkeypatch.setattr(src, "_read_4d", lambda *a: (_ for _ in ()).throw(OSError("filter returned failure during read")))
    with pytest.raises(
        InputError, match=r"reading scan rows 0:2.*failed: filter returned failure during read; .*bitshuffle \(HDF5 filter 32008\)"
    ):
        src.read_block(0, 2, 0, 2)
    src.close()
