"""`prenet-jax preprocess --distributed` (issue 16, parts 2-3): two processes x one CPU
device on localhost write the same file as one process, bit for bit."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import prenet_jax as pj
from prenet_jax.internal import part_path, row_shares
from prenet_jax.io import read_result

ROOT = Path(__file__).resolve().parents[1]


def _cli(*argv, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    cmd = [
        sys.executable,
        "-m",
        "prenet_jax.cli",
        "preprocess",
        *map(str, argv),
        "--cpu",
        "--no-progress",
        "--batch-size",
        "16",
        "--classical",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _local_script(src, out, *extra):
    """infer/distributed/local.sh: two processes on this machine (the recipe users run)."""
    cli = f"{sys.executable} -m prenet_jax.cli"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", PRENET_JAX=cli, PYTHON=sys.executable)
    cmd = ["bash", str(ROOT / "infer" / "distributed" / "local.sh"), "-n", "2", str(src), "-o", str(out)]
    cmd += ["--cpu", "--no-progress", "--batch-size", "16", "--classical", *map(str, extra)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_row_shares():
    assert row_shares(9, 2) == [(0, 4), (4, 9)]
    assert row_shares(3, 4) == [(0, 1), (1, 2), (2, 2), (2, 3)]  # a process may get no row
    assert sum(b - a for a, b in row_shares(257, 7)) == 257  # (a run refuses more processes than rows)


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tmp_path):
    sim = pj.synthetic_cube(scan=(9, 8), shape=(48, 48), radius=7.0, ellipse=pj.Ellipse(1.05, 0.5), dose=2e4, seed=1)
    src = tmp_path / "cube.npy"
    np.save(src, sim["cube"])
    one = _cli(src, "-o", tmp_path / "one.h5")
    log1 = one.communicate(timeout=600)[0]
    assert one.returncode == 0, log1
    two = _local_script(src, tmp_path / "two.h5")
    assert two.returncode == 0, two.stdout + two.stderr
    # process 0 speaks for the job
    assert two.stdout.count("distributed: 2 processes, rows 0:4, 4:9") == 1 and "merge: 2 parts" in two.stdout
    a, b = read_result(tmp_path / "one.h5", data=True), read_result(tmp_path / "two.h5", data=True)
    # the frames, centres, flags, means and ellipse: bit for bit (pass 0 sees the same
    # frames in the same batches through the all-gather; each frame's step does not
    # depend on which batch it is in)
    np.testing.assert_array_equal(a["data"], b["data"])
    pa, pb = a["preprocessing"], b["preprocessing"]
    for key in (
        "qx0",
        "qy0",
        "qx0_after",
        "qy0_after_friedel",
        "flags",
        "counts_lost",
        "mean_before",
        "mean_after",
        "frame_counts",
        "mask",
    ):
        np.testing.assert_array_equal(pa[key], pb[key], err_msg=key)
    for key in ("ellipse_ratio", "ellipse_angle", "residual_ellipse_ratio", "frames_in_means", "input_sha256"):
        assert pa[key] == pb[key], key
    # only the output and its figures are left: the parts were merged and removed
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == [
        "two.h5",
        "two_centers.png",
        "two_mean.png",
        "two_polar.png",
        "two_radial.png",
    ]
    assert not part_path(tmp_path / "two.h5", 0, 2).exists()


def test_distributed_refuses_many_files_and_descan(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 2, 16, 16), np.float32))
    p = _cli(tmp_path / "a.npy", tmp_path / "a.npy", "-o", tmp_path / "out/", "--distributed")
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 2 and "--distributed shares ONE scan" in out
    from prenet_jax.io import InputError
    from prenet_jax.preprocess import preprocess_distributed

    with pytest.raises(InputError, match="--descan with --distributed"):
        preprocess_distributed(tmp_path / "a.npy", tmp_path / "b.h5", descan="plane")


def test_a_finished_part_is_reused_by_resume_and_only_by_a_run_like_it(tmp_path):
    """A part records its run (input, configuration, ellipse, rows, mask...) and its results:
    --resume reuses it; a run with another ellipse writes its own."""
    from prenet_jax.internal import Calibration as _Calibration
    from prenet_jax.internal import stream_part as _stream_part
    from prenet_jax.internal import validated as _validated
    from prenet_jax.preprocess import Cancel

    sim = pj.synthetic_cube(scan=(6, 4), shape=(32, 32), radius=5.0, dose=1e4, seed=2)
    np.save(tmp_path / "c.npy", sim["cube"])
    job = _validated(tmp_path / "c.npy", tmp_path / "out.h5", lambda s: None, True)
    cal = _Calibration(pj.Ellipse(1.04, 0.3), "fixed")
    run = lambda cal, resume: _stream_part(job, cal, (3, 6), 1, 2, resume, False, Cancel(), lambda s: None)  # noqa: E731
    first = run(cal, False)
    assert not first.reused and first.path == part_path(tmp_path / "out.h5", 1, 2) and first.path.exists()
    assert first.stats["centers"].shape == (3, 4, 2)
    again = run(cal, True)
    assert again.reused
    for k, v in first.stats.items():
        np.testing.assert_array_equal(again.stats[k], v, err_msg=k)
    other = run(_Calibration(pj.Ellipse(1.08, 0.3), "fixed"), True)
    assert not other.reused
    job.source.close()


def test_more_processes_than_rows_is_refused_by_every_process(tmp_path):
    np.save(tmp_path / "row.npy", np.ones((1, 4, 16, 16), np.float32))
    p = _local_script(tmp_path / "row.npy", tmp_path / "out.h5")
    assert p.returncode == 2 and p.stderr.count("2 processes for 1 scan rows") == 2, p.stdout + p.stderr
    assert sorted(q.name for q in tmp_path.iterdir()) == ["row.npy"]
