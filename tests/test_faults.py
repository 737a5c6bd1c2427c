"""Injected faults in `prenet-jax preprocess`: each ends in one clear error line and a
non-zero exit status, leaves no partial output (no file, no `.partial`, no figures)
and leaves the input byte-identical."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from _helpers import run_preprocess, sha

import prenet_jax as pj
from prenet_jax.io import EMDWriter, Source
from prenet_jax.preprocess import preprocess_file

REPO = Path(__file__).resolve().parents[1]
FIXED = ["--ellipse", "1.06,23"]  # no pass 0: the faults hit pass 1 unless a test wants otherwise


def run_cli(*argv) -> tuple[int, str, str]:
    return run_preprocess(*argv, "--batch-size", "8")


@pytest.fixture(scope="module")
def frames():
    return pj.synthetic_cube(scan=(6, 8), shape=(32, 32), radius=5.0, seed=1, dose=1e4)["cube"]


@pytest.fixture
def data(tmp_path, frames, monkeypatch):
    """A folder holding only the input (.npy); reads of 16 KiB, so pass 1 has 6 blocks."""
    monkeypatch.setitem(preprocess_file.__kwdefaults__, "block_bytes", 16 << 10)
    src = tmp_path / "in.npy"
    np.save(src, frames)
    return src


def check_failed(rc, err, src, digest, status, *messages):
    """One line on stderr with every message, the status, and nothing but the input left."""
    assert rc == status, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for m in messages:
        assert m in err, err
    assert sorted(p.name for p in src.parent.iterdir()) == [src.name]
    assert sha(src) == digest


def fail_on_call(n: int, exc: BaseException, original):
    """A wrapper of ``original`` that raises ``exc`` on its n-th call (1-based)."""
    calls = [0]

    def wrapper(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise exc
        return original(*a, **k)

    return wrapper


# ----------------------------------------------------------------------------- the output


def test_disk_full_during_the_write(data, monkeypatch):
    digest = sha(data)
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(EMDWriter, "_store", fail_on_call(3, full, EMDWriter._store))
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(
        rc,
        err,
        data,
        digest,
        1,
        f"writing {data.parent / 'out.h5'} failed: No space left on device",
        "the disk is full",
        "Nothing was written",
    )


@pytest.mark.slow
def test_a_real_write_limit_in_libhdf5(tmp_path, frames):
    """The operating system refuses the write (a file-size limit: EFBIG), inside libhdf5."""
    src = tmp_path / "in.npy"
    np.save(src, np.tile(frames, (8, 1, 1, 1)))  # 1.5 MiB; the output (uncompressed) cannot fit in 256 KiB
    digest = sha(src)

    # the limit is set in the child before the command runs (Python ignores SIGXFSZ: writes fail with EFBIG)
    cli = (
        "import resource, runpy; resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10)); "
        "runpy.run_module('prenet_jax.cli', run_name='__main__', alter_sys=True)"
    )
    argv = [
        sys.executable,
        "-c",
        cli,
        "preprocess",
        str(src),
        "-o",
        str(tmp_path / "out.h5"),
        "--compression",
        "none",
        "--no-progress",
        "--classical",
        *FIXED,
    ]
    proc = subprocess.run(argv, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=900)
    err = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (
        err[-1].startswith("error: ")
        and f"{tmp_path / 'out.h5'} failed: File too large; the file is larger than this file system or process allows" in err[-1]
    ), err[-1]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    assert sha(src) == digest


def test_output_folder_is_a_file(data):
    digest = sha(data)
    (data.parent / "notes").write_text("")
    rc, out, err = run_cli(data, "-o", data.parent / "notes" / "out.h5", *FIXED)
    (data.parent / "notes").unlink()
    check_failed(rc, err, data, digest, 2, "output folder", "is a file, not a folder")


def test_output_folder_not_writable_even_for_root(data):
    # sysfs takes no new files, not even from root (for whom chmod would change nothing)
    target = Path("/sys/kernel")
    if not target.is_dir():
        pytest.skip("no /sys/kernel here")
    digest = sha(data)
    rc, out, err = run_cli(data, "-o", target / "out.h5", *FIXED)
    assert not (target / "out.h5").exists()
    check_failed(rc, err, data, digest, 2, "/sys/kernel")
    assert "cannot create files in the output folder" in err or "is not writable" in err


def test_output_folder_turns_read_only_before_the_write(data, monkeypatch):
    # the checks at start passed; creating the temporary output fails later (permissions changed)
    digest = sha(data)
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*a, suffix=None, **k):
        if suffix == ".partial":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(*a, suffix=suffix, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(
        rc, err, data, digest, 1, f"creating {data.parent / 'out.h5'} failed: Permission denied", "choose a writable output folder"
    )


def test_figures_cannot_be_written(data, monkeypatch):
    digest = sha(data)
    from prenet_jax.preprocess import _diagnostics

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(_diagnostics, "_save", fail_on_call(3, full, _diagnostics._save))  # after two figures were written
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(rc, err, data, digest, 1, "writing the diagnostic figures in", "No space left on device")


# ----------------------------------------------------------------------------- the input


def write_h5(path: Path, cube: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=cube, chunks=(1, 4) + cube.shape[2:], compression="gzip")


def test_truncated_hdf5(tmp_path, frames):
    src = tmp_path / "in.h5"
    write_h5(src, frames)
    with open(src, "r+b") as fh:
        fh.truncate(src.stat().st_size * 6 // 10)
    digest = sha(src)
    rc, out, err = run_cli(src, "-o", tmp_path / "out.h5", *FIXED)
    check_failed(rc, err, src, digest, 2, f"{src} cannot be opened as HDF5", "truncated", "damaged")


@pytest.mark.parametrize("with_pass0", [False, True])
def test_hdf5_corrupt_in_the_middle(tmp_path, frames, monkeypatch, with_pass0):
    monkeypatch.setitem(preprocess_file.__kwdefaults__, "block_bytes", 16 << 10)
    src = tmp_path / "in.h5"
    write_h5(src, frames)
    with h5py.File(src, "r") as f:
        info = f["data"].id.get_chunk_info_by_coord((3, 4, 0, 0))  # a chunk in the middle of the scan
    with open(src, "r+b") as fh:
        fh.seek(info.byte_offset + 16)
        fh.write(b"\xff" * 64)  # the deflate stream no longer decodes
    digest = sha(src)
    # --bad-pixels none: the search for bad pixels would read the damaged chunk first
    args = (*([] if with_pass0 else FIXED), "--calibration-frames", "48", "--bad-pixels", "none")
    rc, out, err = run_cli(src, "-o", tmp_path / "out.h5", *args)
    check_failed(rc, err, src, digest, 2, f"of {src}:/data failed", "is the file damaged or truncated?")
    # before pass 0 (or pass 1, with a fixed ellipse) the centre checks read 32 frames
    # sampled across the 8 x 8 scan in one read: the first read to meet the damage
    assert "reading 32 frames from index 0 of" in err, err
    if with_pass0:  # and the bad-pixel search, which samples every frame of this small scan, 32 at a time
        rc, out, err = run_cli(src, "-o", tmp_path / "out.h5", *FIXED)
        check_failed(rc, err, src, digest, 2, "reading 32 frames from index 0 of", "is the file damaged or truncated?")


def test_truncated_npy(data):
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size - 5000)
    digest = sha(data)
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(rc, err, data, digest, 2, "is truncated: its header promises", "(6, 8, 32, 32) float32", "was the copy interrupted")


def test_npy_with_a_damaged_header(data):
    raw = bytearray(data.read_bytes())
    raw[20:40] = b"#" * 20  # inside the header's dict literal
    data.write_bytes(bytes(raw))
    digest = sha(data)
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(rc, err, data, digest, 2, "is not a readable .npy file")


def _after_first_read(action):
    """Wrap Source._read_block so that ``action(path)`` runs after its first read."""
    original = Source._read_block
    calls = [0]

    def wrapper(self, *a):
        out = original(self, *a)
        calls[0] += 1
        if calls[0] == 1:
            action(self.path)
        return out

    return wrapper


def test_input_modified_while_being_read(data, monkeypatch):
    digest = sha(data)

    def touch(path):  # same bytes, new modification time: e.g. rewritten by an acquisition
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    monkeypatch.setattr(Source, "_read_block", _after_first_read(touch))
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(
        rc, err, data, digest, 2, f"{data} changed while it was being read (modification time changed)", "still being written or copied"
    )


def test_input_growing_while_being_read(data, monkeypatch):
    size = data.stat().st_size

    def grow(path):
        with open(path, "ab") as fh:
            fh.write(b"\0" * 4096)

    monkeypatch.setattr(Source, "_read_block", _after_first_read(grow))
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    grown = sha(data)  # what the test made of it; the run itself wrote nothing there
    check_failed(rc, err, data, grown, 2, f"changed while it was being read (size {size} -> {size + 4096} bytes")


# ----------------------------------------------------------------------------- the workers


def test_reader_thread_raises(data, monkeypatch):
    digest = sha(data)
    monkeypatch.setattr(Source, "_read_block", fail_on_call(2, RuntimeError("device not ready"), Source._read_block))
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(rc, err, data, digest, 2, "reading scan rows 1:2, columns 0:8 of", "failed: device not ready")


def test_compute_step_raises(data, monkeypatch):
    digest = sha(data)
    from prenet_jax.preprocess import _stream

    real = _stream.make_post

    def failing_post(*args):
        return fail_on_call(2, RuntimeError("XLA went away"), real(*args))

    monkeypatch.setattr(_stream, "make_post", failing_post)
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(
        rc,
        err,
        data,
        digest,
        1,
        "the compute step failed on frames 8..15 (in reading order): RuntimeError: XLA went away",
        "nothing was written",
    )


def test_writer_thread_raises(data, monkeypatch):
    digest = sha(data)
    monkeypatch.setattr(EMDWriter, "write_block", fail_on_call(2, RuntimeError("bad block"), EMDWriter.write_block))
    rc, out, err = run_cli(data, "-o", data.parent / "out.h5", *FIXED)
    check_failed(rc, err, data, digest, 1, "the writer thread failed: RuntimeError: bad block", "nothing was written")
