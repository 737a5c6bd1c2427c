"""`prenet-jax preprocess`: file in, corrected py4DSTEM-compatible file out; bad input handled."""

import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import run_preprocess as run
from _helpers import sha
from test_io import write_py4dstem_like

import prenet_jax as pj
from prenet_jax.cli import main
from prenet_jax.conventions import EDGE_LOSS_FLAG, FLAG_EDGE
from prenet_jax.io import read_result
from prenet_jax.ops import com_center, fit_ellipse_edge
from prenet_jax.preprocess import FLAG_NEGATIVE, FLAG_SATURATED, ellipse_from_py4dstem, ellipse_to_py4dstem

REPO = Path(__file__).resolve().parents[1]
TRUE_ELLIPSE = pj.Ellipse(1.08, 0.5)


def refit_ratio(mean: np.ndarray) -> float:
    fit = jax.jit(fit_ellipse_edge)(jnp.asarray(mean, jnp.float32))
    return float(fit["a"] / fit["b"])


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A cube of known centres (descan + jitter) and ellipse, in py4DSTEM's layout, preprocessed once."""
    d = tmp_path_factory.mktemp("known")
    cube = pj.synthetic_cube(scan=(6, 6), shape=(64, 64), radius=12.0, ellipse=TRUE_ELLIPSE, jitter=0.7, seed=3)
    src = d / "scan.h5"
    write_py4dstem_like(src, cube["cube"])
    before = (sha(src), src.stat().st_mtime_ns)
    rc, out, err = run(src, "-o", d / "out.h5", "--cpu")
    return {"dir": d, "src": src, "out": d / "out.h5", "truth": cube, "before": before, "rc": rc, "stdout": out, "stderr": err}


def test_known_cube_comes_out_centred_and_circular(known):
    assert known["rc"] == 0, known["stderr"]
    r = read_result(known["out"], data=True)
    p = r["preprocessing"]
    found = np.stack([p["qx0"], p["qy0"]], -1)  # qx0 = row, qy0 = col of the beam in the INPUT frames
    assert np.abs(found - known["truth"]["centers"]).max() < 0.05
    data = r["data"]
    assert data.shape == (6, 6, 64, 64) and data.dtype == np.float32
    com = np.asarray(jax.vmap(com_center)(jnp.asarray(data.reshape(-1, 64, 64))))
    assert np.abs(com - 31.5).max() < 0.05  # every frame centred at ((H-1)/2, (W-1)/2)
    assert refit_ratio(data.mean((0, 1))) < 1.005  # circular
    assert p["ellipse_ratio"] == pytest.approx(TRUE_ELLIPSE.ratio, abs=0.01)
    assert p["residual_ellipse_ratio"] < 1.005


def test_output_records_the_measurements_and_provenance(known):
    r = read_result(known["out"])
    cal, p = r["calibration"], r["preprocessing"]
    # the calibration describes the corrected cube: origin at the frame centre, circular
    assert np.all(cal["qx0"] == 31.5) and np.all(cal["qy0"] == 31.5) and cal["qx0_mean"] == 31.5
    assert cal["a"] == cal["b"] and cal["theta"] == 0.0
    assert cal["Q_pixel_size"] == 0.025 and cal["Q_pixel_units"] == "A^-1"  # carried from the input
    # the measured ellipse, in both conventions, is the same ellipse
    ell = ellipse_from_py4dstem(p["a"], p["b"], p["theta"])
    assert ell.ratio == pytest.approx(p["ellipse_ratio"]) and ell.angle == pytest.approx(p["ellipse_angle"], abs=1e-9)
    assert p["input_sha256"] == known["before"][0]
    assert p["input_path"] == str(known["src"].resolve()) and p["input_dataset"] == "/experiment_root/experiment/data"
    assert p["input_format"] == "emd" and p["prenet_jax_version"] == pj.__version__
    assert p["weights_id"].startswith("none") and '"center_method": "com"' in p["config_json"]
    # Only the edge flag: the descan carries outer reflections out of a few frames.
    assert p["flags"].shape == (6, 6) and not (p["flags"] & ~np.uint8(FLAG_EDGE)).any()
    np.testing.assert_array_equal((p["flags"] & FLAG_EDGE) != 0, p["counts_lost"] > EDGE_LOSS_FLAG)
    assert p["mean_before"].shape == p["mean_after"].shape == (64, 64)


def test_input_is_never_modified(known):
    assert (sha(known["src"]), known["src"].stat().st_mtime_ns) == known["before"]


def test_summary_and_diagnostics(known):
    out = known["stdout"]
    for text in (
        "beam centre spread",
        "ellipse (fit): ratio a/b",
        "py4DSTEM: a",
        "frames flagged",
        "running on the CPU",
        "methods: denoise=gaussian (sigma from each frame's counts), center=com, ellipse=fit",
    ):
        assert text in out
    # noise-free intensities: the dose-adaptive Gaussian finds no noise to remove, and says so
    assert "denoise: gaussian filter, sigma chosen per frame" in out and "no frame needed a filter (sigma 0 for all 36)" in out
    assert not read_result(known["out"])["preprocessing"]["denoise_sigma"].any()
    for name in ("mean", "centers", "polar", "radial"):
        png = known["dir"] / f"out_{name}.png"
        assert png.stat().st_size > 10_000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_py4dstem_opens_the_output(known):
    other = os.environ.get("PRENET_PY4DSTEM_PYTHON")
    code = "import sys, py4DSTEM; dc = py4DSTEM.read(sys.argv[1]); assert type(dc).__name__ == 'DataCube'; assert dc.data.shape == (6, 6, 64, 64); print(dc.calibration.get_origin_mean())"
    if other:
        out = subprocess.run([other, "-c", code, str(known["out"])], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "31.5" in out.stdout
        return
    pytest.importorskip("py4DSTEM")
    subprocess.run([sys.executable, "-c", code, str(known["out"])], check=True, timeout=300)


def test_existing_output_is_refused_without_overwrite(known):
    stamp = known["out"].stat().st_mtime_ns
    rc, out, err = run(known["src"], "-o", known["out"])
    assert rc == 2 and "exists" in err and "--overwrite" in err and "Traceback" not in err
    assert known["out"].stat().st_mtime_ns == stamp
    # a fixed ellipse in py4DSTEM's convention (the truth) skips pass 0 and also gives a circular result
    a, b, theta = ellipse_to_py4dstem(TRUE_ELLIPSE, 12.0)
    rc, out, err = run(known["src"], "-o", known["out"], "--overwrite", "--ellipse-py4dstem", f"{a},{b},{theta}", "--devices", "0")
    assert rc == 0, err
    assert "pass 0: ellipse" not in out
    r = read_result(known["out"], data=True)
    assert r["preprocessing"]["ellipse_source"] == "fixed"
    assert refit_ratio(r["data"].mean((0, 1))) < 1.003


@pytest.fixture
def small_h5(tmp_path):
    cube = pj.synthetic_cube(scan=(2, 3), shape=(32, 32), radius=5.0, seed=1)["cube"]
    p = tmp_path / "small.h5"
    with h5py.File(p, "w") as f:
        f["cube"] = cube
        f["image"] = cube[0, 0]
        f["tiny"] = np.ones((2, 2, 6, 6), np.float32)
    return p


@pytest.mark.parametrize(
    "args,message",
    [
        (["{d}/missing.h5"], "no such file"),
        (["{src}", "--dataset", "image"], "2-D); preprocess needs 4-D"),
        (["{src}", "--dataset", "tiny"], "frames are 6x6 px; the pipeline needs at least 8x8"),
        (["{src}", "--dataset", "cube", "--ellipse", "1.1"], "expected RATIO,ANGLE_DEG"),
        (["{src}", "--dataset", "cube", "--devices", "7"], "local device"),
        (["{src}", "--dataset", "cube", "--denoise-method", "network"], "hold no such network (they hold center_fine, center_net)"),
        (["{src}", "--dataset", "cube", "--scan", "2,2"], "does not match the scan shape"),
        (["{src}", "--dataset", "cube", "--output-dtype", "complex64"], "output dtype"),
        (["{src}", "--dataset", "cube", "--weights", "{d}"], "no weights.npz"),
        (["{src}", "--dataset", "cube", "-o", "{d}/no/such/dir/out.h5"], "does not exist"),
    ],
)
def test_bad_input_names_the_problem_and_exits_nonzero(small_h5, args, message):
    d = small_h5.parent
    argv = [a.format(d=d, src=small_h5) for a in args]
    if "-o" not in argv:
        argv += ["-o", str(d / "out.h5")]
    rc, out, err = run(*argv)
    assert rc == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (d / "out.h5").exists()


def test_argument_errors_exit_2(small_h5, capsys):
    with pytest.raises(SystemExit) as e:
        main(["preprocess", str(small_h5), "-o", str(small_h5.parent / "o.h5"), "--batch-size", "0"])
    assert e.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_non_square_odd_frames_are_handled(tmp_path):
    d = pj.synthetic_cube(scan=(3, 4), shape=(45, 61), radius=8.0, ellipse=TRUE_ELLIPSE, jitter=0.6, seed=5)
    np.save(tmp_path / "odd.npy", d["cube"])
    # a 1 px Gaussian smooths the sharp edges, so that bilinear resampling keeps the centre of
    # mass within 0.05 px (unfiltered: 0.055; the default leaves these noise-free frames unfiltered)
    rc, out, err = run(
        tmp_path / "odd.npy",
        "-o",
        tmp_path / "odd.h5",
        "--no-diagnostics",
        "--gaussian-sigma",
        "1",
        "--ellipse",
        f"{TRUE_ELLIPSE.ratio},{math.degrees(TRUE_ELLIPSE.angle)}",
    )
    assert rc == 0, err
    r = read_result(tmp_path / "odd.h5", data=True)
    found = np.stack([r["preprocessing"]["qx0"], r["preprocessing"]["qy0"]], -1)
    assert np.abs(found - d["centers"]).max() < 0.05
    assert r["data"].shape == (3, 4, 45, 61)
    com = np.asarray(jax.vmap(com_center)(jnp.asarray(r["data"].reshape(-1, 45, 61))))
    assert np.abs(com - np.array([22.0, 30.0])).max() < 0.05


def test_defective_frames_are_flagged_and_do_not_spread(tmp_path):
    clean = pj.synthetic_cube(scan=(4, 4), shape=(48, 48), radius=7.0, seed=2)["cube"] * 100
    bad = clean.copy()
    bad[0, 1, 5, 5] = np.nan
    bad[0, 1, 20:22, 30] = np.nan
    bad[1, 2, 40, 3] = np.inf
    bad[2, 0, :3, :3] = -5.0  # dark-subtracted background
    bad[3, 3] = 0.0  # empty
    np.save(tmp_path / "clean.npy", clean)
    np.save(tmp_path / "bad.npy", bad)
    common = ["--no-diagnostics", "--batch-size", "8", "--ellipse", "1.05,20"]  # same ellipse for both runs
    rc, out, err = run(tmp_path / "bad.npy", "-o", tmp_path / "bad.h5", *common)
    assert rc == 0, err
    assert "1 frames had negative pixels" in out and "treated as zero counts" in out
    rc2, _, err2 = run(tmp_path / "clean.npy", "-o", tmp_path / "clean.h5", *common)
    assert rc2 == 0, err2
    rb, rcl = read_result(tmp_path / "bad.h5", data=True), read_result(tmp_path / "clean.h5", data=True)
    flags = rb["preprocessing"]["flags"]
    expect = np.zeros((4, 4), np.uint8)
    expect[0, 1] = expect[1, 2] = pj.FLAG_NONFINITE
    expect[2, 0] = FLAG_NEGATIVE
    expect[3, 3] = pj.FLAG_EMPTY
    np.testing.assert_array_equal(flags, expect)
    assert np.isfinite(rb["data"]).all()
    # frames sharing a batch with the NaN/Inf frames come out exactly as without them
    same = np.ones((4, 4), bool)
    same[0, 1] = same[1, 2] = same[2, 0] = same[3, 3] = False
    np.testing.assert_allclose(rb["data"][same], rcl["data"][same], rtol=1e-6, atol=1e-4)
    # the means leave out the non-finite and empty frames
    keep = (flags & (pj.FLAG_NONFINITE | pj.FLAG_EMPTY)) == 0
    np.testing.assert_allclose(rb["preprocessing"]["mean_after"], rb["data"][keep].mean(0), rtol=1e-4, atol=1e-3)
    assert rb["preprocessing"]["frames_in_means"] == 13


@pytest.mark.parametrize("descan", ["frame", "plane"])  # the streamed step; the descan run's centres pass
def test_negative_pixels_can_be_refused(tmp_path, descan):
    cube = pj.synthetic_cube(scan=(2, 2), shape=(32, 32), radius=5.0, seed=1)["cube"] - 0.01
    np.save(tmp_path / "neg.npy", cube)
    rc, out, err = run(tmp_path / "neg.npy", "-o", tmp_path / "neg.h5", "--negative", "error", "--no-ellipse", "--descan", descan)
    assert rc == 2 and "has negative pixels (min -0.01)" in err and "--negative clip" in err
    assert not (tmp_path / "neg.h5").exists() and not list(tmp_path.glob(".neg*"))


def test_uint16_full_range_without_wrap_around_and_saturation_flags(tmp_path):
    d = pj.synthetic_cube(scan=(3, 3), shape=(48, 48), radius=9.0, jitter=0.8, seed=4, lattice=None)
    cube = np.round(d["cube"] * 65535.0).clip(0, 65535).astype(np.uint16)
    cube[1:] = np.round(d["cube"][1:] * 60000.0).astype(np.uint16)  # rows 1-2 stay below saturation
    np.save(tmp_path / "u16.npy", cube)
    common = ["--no-diagnostics", "--no-denoise", "--no-ellipse", "--interpolation", "cubic"]  # cubic rings: values < 0 and > max
    assert run(tmp_path / "u16.npy", "-o", tmp_path / "f32.h5", *common)[0] == 0
    rc, out, err = run(tmp_path / "u16.npy", "-o", tmp_path / "u16.h5", "--output-dtype", "input", *common)
    assert rc == 0, err
    f = read_result(tmp_path / "f32.h5", data=True)
    u = read_result(tmp_path / "u16.h5", data=True)
    assert u["data"].dtype == np.uint16 and f["data"].dtype == np.float32
    assert f["data"].max() > 60000  # read as unsigned: nothing above 32767 went negative
    assert (f["data"] < 0).any() and (f["data"] > 65535).any()  # the ringing the cast must not wrap
    np.testing.assert_array_equal(u["data"], np.clip(np.round(f["data"]), 0, 65535).astype(np.uint16))
    assert u["data"][f["data"] < 0].max() == 0  # a wrap-around would put 65535-ish here
    flags = u["preprocessing"]["flags"]
    assert ((flags & FLAG_SATURATED) != 0).tolist() == [[True] * 3, [False] * 3, [False] * 3]
    assert "3 saturated" in out and "saturation level 65535" in out


# Interrupts (SIGINT/SIGTERM at every phase): tests/test_interrupts.py; injected faults
# (disk full, unwritable folder, damaged or changing input, failing workers): tests/test_faults.py.


_MEMORY_CHILD = """
import sys
import numpy as np
from prenet_jax import Pipeline
from prenet_jax.io import EMDWriter, open_input
from prenet_jax.preprocess import stream

def rss_mib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024

src = open_input(sys.argv[1])
pipe = Pipeline.classical(batch_size=32)
done, marks = [0], []
def progress(n):  # resident memory after every batch
    done[0] += n
    marks.append((done[0], rss_mib()))
with EMDWriter(sys.argv[2], src.shape, np.float32, compression="none") as w:
    stream(src, pipe, np.eye(2), w, out_dtype=np.dtype(np.float32), block_bytes=1 << 20, progress=progress)
    w.write_metadata({}, {})
    w.commit()
n = src.n_frames
warm = max(r for k, r in marks if k <= n // 5)  # pipeline full, step compiled
print("RSS_MIB", warm, max(r for k, r in marks))
"""


def test_host_memory_is_bounded_by_the_batches_not_the_cube(tmp_path):
    frame = pj.synthetic_cube(scan=(2, 2), shape=(128, 128), radius=16.0, seed=1)["cube"].reshape(4, 128, 128)
    src = tmp_path / "large.h5"
    with h5py.File(src, "w") as f:  # 48 x 48 frames of 128 x 128 float32: 144 MiB
        ds = f.create_dataset("data", shape=(48, 48, 128, 128), dtype=np.float32, chunks=(1, 4, 128, 128))
        for i in range(48):
            ds[i] = np.resize(frame, (48, 128, 128))
    # fewer glibc malloc arenas: less allocator noise (per-thread arenas keep freed memory)
    env = dict(os.environ, JAX_PLATFORMS="cpu", MALLOC_ARENA_MAX="2")
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(src), str(tmp_path / "out.h5")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    warm, peak = (float(x) for x in out.stdout.split("RSS_MIB")[1].split())
    cube_mib = src.stat().st_size / 2**20
    print(f"resident memory after 20% of the frames {warm:.0f} MiB, peak {peak:.0f} MiB, for a {cube_mib:.0f} MiB cube")
    assert cube_mib > 140 and (tmp_path / "out.h5").stat().st_size > 0.9 * src.stat().st_size
    # 115 MiB of frames pass through (read, computed, written) after that point: memory
    # must not follow them. Measured since the bookkeeping also runs the Friedel check:
    # +2 to +32 MiB (XLA's CPU buffer pools); it was +5 to +10 before, and 24 failed.
    assert peak - warm < 48, (warm, peak)


def test_out_of_memory_is_an_error_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """XLA running out of memory (a 2048x1536 SEM stack of RosettaSciIO's test data did at
    batch 128 on 24 GB) ends with an error naming --batch-size, and writes nothing."""
    import prenet_jax.preprocess

    class JaxRuntimeError(RuntimeError):  # the name XLA's error carries
        pass

    def oom(*a, **k):
        raise JaxRuntimeError("INTERNAL: Error dispatching computation: Out of memory allocating 28366736656 bytes.")

    src = tmp_path / "cube.npy"
    np.save(src, np.ones((2, 2, 16, 16), np.float32))
    monkeypatch.setattr(prenet_jax.preprocess, "preprocess_file", oom)  # the command imports it at run time
    out = tmp_path / "out.h5"
    assert main(["preprocess", str(src), "-o", str(out), "--classical"]) == 1
    err = capsys.readouterr().err
    assert "out of memory at a batch of 128 frames" in err and "--batch-size 8" in err and "Traceback" not in err
    assert not out.exists()
