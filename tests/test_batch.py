"""`prenet-jax preprocess A B C -o OUTDIR/`: many files, one compile, failures skipped, --resume."""

import jax
import numpy as np
import pytest
from _helpers import run_preprocess as run
from _helpers import sha

import prenet_jax as pj
from prenet_jax.config import PipelineConfig
from prenet_jax.io import InputError, read_result
from prenet_jax.preprocess import ReadAhead, batch_outputs, expand_inputs, preprocess_files

ELLIPSE = pj.Ellipse(1.06, 0.7)


def _cube(seed: int) -> dict:
    return pj.synthetic_cube(scan=(4, 4), shape=(64, 64), radius=11.0, ellipse=ELLIPSE, jitter=0.6, seed=seed)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """Two good scans, a damaged one between them, and one run of all three into a folder."""
    d = tmp_path_factory.mktemp("session")
    truths = {}
    for name, seed in (("a", 1), ("c", 2)):
        cube = _cube(seed)
        np.save(d / f"{name}.npy", cube["cube"].astype(np.float32))
        truths[name] = cube
    (d / "b.npy").write_bytes(b"not a numpy file")  # a copy that broke
    before = {p.name: sha(p) for p in d.iterdir()}
    rc, out, err = run(d / "a.npy", d / "b.npy", d / "c.npy", "-o", d / "out", "--cpu", "--no-diagnostics")
    return {"dir": d, "truths": truths, "rc": rc, "stdout": out, "stderr": err, "before": before}


def test_a_bad_file_is_skipped_and_the_others_are_processed(session):
    d = session["dir"]
    assert session["rc"] == 2, session["stderr"]  # the only failure is an input problem
    assert "1 of 3 files failed" in session["stderr"]
    assert sorted(p.name for p in (d / "out").iterdir()) == ["a_pre.h5", "c_pre.h5"]  # nothing half-written for b
    table = session["stdout"][session["stdout"].index("3 files:") :]
    assert "2 done" in table and "1 failed" in table
    row = next(line for line in table.splitlines() if line.startswith("| b.npy"))
    assert "failed" in row and "not a .npy file" in row
    assert next(line for line in table.splitlines() if line.startswith("| a.npy")).startswith("| a.npy | done | 16 |")
    assert {p.name: sha(p) for p in d.iterdir() if p.is_file()} == session["before"]  # inputs untouched
    for name, truth in session["truths"].items():
        p = read_result(d / "out" / f"{name}_pre.h5")["preprocessing"]
        found = np.stack([p["qx0"], p["qy0"]], -1)
        assert np.abs(found - truth["centers"]).max() < 0.05  # each file its own centres
        assert p["ellipse_ratio"] == pytest.approx(ELLIPSE.ratio, abs=0.01)


def test_the_batch_output_equals_the_single_file_output(session):
    d = session["dir"]
    rc, _, err = run(d / "a.npy", "-o", d / "single_a.h5", "--cpu", "--no-diagnostics")
    assert rc == 0, err
    one, many = read_result(d / "single_a.h5", data=True), read_result(d / "out" / "a_pre.h5", data=True)
    np.testing.assert_array_equal(one["data"], many["data"])
    np.testing.assert_array_equal(one["preprocessing"]["qx0"], many["preprocessing"]["qx0"])


def test_resume_skips_finished_outputs_and_redoes_the_rest(session):
    d = session["dir"]
    stamp = (d / "out" / "a_pre.h5").stat().st_mtime_ns
    np.save(d / "b.npy", _cube(3)["cube"].astype(np.float32))  # the broken copy, copied again
    rc, out, err = run(d / "a.npy", d / "b.npy", d / "c.npy", "-o", d / "out", "--cpu", "--no-diagnostics", "--resume")
    assert rc == 0, err
    assert "1 done, 2 skipped" in out
    assert (d / "out" / "a_pre.h5").stat().st_mtime_ns == stamp  # not rewritten
    assert (d / "out" / "b_pre.h5").exists()
    # Without --resume (or --overwrite) an existing output fails that file, and says what to do.
    rc, out, err = run(d / "a.npy", "-o", d / "out/", "--cpu", "--no-diagnostics")
    assert rc == 1 and "--resume" in out and "--overwrite" in out


def test_files_of_one_shape_compile_once(tmp_path):
    """The second file of a run reuses every compiled program of the pipeline (only the
    figures' polar transform, whose radius follows the measured centre, may compile)."""
    for i in range(2):
        np.save(tmp_path / f"s{i}.npy", _cube(10 + i)["cube"].astype(np.float32))
    compiles: list[str] = []
    listener = lambda name, *a, **k: compiles.append(name) if "backend_compile" in name else None  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    counts = []
    try:
        pipe = pj.Pipeline(PipelineConfig.classical(batch_size=8))
        log = lambda s: counts.append(len(compiles)) if s.startswith("[") else None  # noqa: E731
        statuses = preprocess_files(
            [tmp_path / "s0.npy", tmp_path / "s1.npy"], tmp_path / "o", pipeline=pipe, log=log, progress=False, diagnostics=False
        )
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert [s.status for s in statuses] == ["done", "done"]
    first, second = counts[1] - counts[0], len(compiles) - counts[1]
    # The first file compiles what earlier tests in this process have not (at least the
    # new pipeline's step: measured 4 to 18 by test order); the second compiles nothing.
    assert first >= 1 and second == 0, (first, second)


def test_inputs_from_folders_and_patterns_and_clashing_names(tmp_path):
    for name in ("x.npy", "y.h5", "notes.txt", "x_pre.h5"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.mib").write_bytes(b"")
    assert [p.name for p in expand_inputs([tmp_path])] == ["x.npy", "y.h5"]  # not text, not our outputs
    assert [p.name for p in expand_inputs([str(tmp_path / "*.npy"), tmp_path / "x.npy"])] == ["x.npy"]  # each once
    with pytest.raises(InputError, match="no file matches"):
        expand_inputs([str(tmp_path / "*.dm4")])
    with pytest.raises(InputError, match="same output"):
        batch_outputs(expand_inputs([tmp_path / "x.npy", tmp_path / "sub"]), tmp_path / "out")
    rc, _, err = run(tmp_path / "missing.h5", tmp_path / "x.npy", "-o", tmp_path / "out", "--cpu")
    assert rc == 2 and "missing.h5: no such file" in err


def test_the_next_file_is_read_ahead_while_one_runs(tmp_path):
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, _cube(1)["cube"].astype(np.float32))
    np.save(b, _cube(2)["cube"].astype(np.float32))
    lines = []
    sts = preprocess_files([a, b], tmp_path / "out", ellipse=ELLIPSE, diagnostics=False, progress=False, log=lines.append)
    assert [s.status for s in sts] == ["done", "done"]
    # the first file takes seconds (a compile), reading the second a few milliseconds
    assert sts[0].read_ahead == 0 and sts[1].read_ahead == b.stat().st_size
    # the budget and stop() bound what is read
    (tmp_path / "big.bin").write_bytes(bytes(3 << 20))
    r = ReadAhead(tmp_path / "big.bin", budget=1 << 20)
    r._thread.join()
    assert r.stop() == 1 << 20
    assert ReadAhead(tmp_path / "missing.bin").stop() == 0  # an unreadable file fails in its own turn
