"""SIGINT and SIGTERM at every phase of `prenet-jax preprocess` leave nothing but the input.

Deterministic: the run's test hook (``PRENET_TEST_HOLD``, see
``prenet_jax/preprocess/_cancel.py``) holds it at a named phase and delivers the signal
there, or tells the test through a pipe that it is there; no sleep races the run.
"""

import contextlib
import io
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _helpers import run_preprocess, sha

import prenet_jax as pj
from prenet_jax.cli import main
from prenet_jax.preprocess import PHASES, Interrupted, preprocess_file

REPO = Path(__file__).resolve().parents[1]
SIGNALS = {"INT": (signal.SIGINT, 130), "TERM": (signal.SIGTERM, 143)}


@pytest.fixture(scope="module")
def cube():
    # 6 x 8 frames of 32 x 32: with 16 KiB reads, 6 blocks, so the output is half written at "stream"
    return pj.synthetic_cube(scan=(6, 8), shape=(32, 32), radius=5.0, ellipse=pj.Ellipse(1.06, 0.4), seed=1, dose=1e4)["cube"]


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setitem(preprocess_file.__kwdefaults__, "block_bytes", 16 << 10)


@pytest.fixture(autouse=True)
def default_signals():
    """Python's own handlers for the test: a run keeps a signal that was ignored when it
    started ignored (SIGINT of a background job is), and these tests must not depend on
    how the test runner was started."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for s, h in old.items():
        signal.signal(s, h)


# `python -m prenet_jax.cli` with Python's own signal handlers, whatever the test runner
# ignores (a child inherits ignored signals); set in the child, before anything else runs
CLI = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "signal.signal(signal.SIGTERM, signal.SIG_DFL); runpy.run_module('prenet_jax.cli', run_name='__main__', alter_sys=True)"
)


def run_cli(*argv) -> tuple[int, str, str]:
    return run_preprocess(*argv, "--batch-size", "8")


def args_for(phase: str) -> list[str]:
    # pass 0 only where it is the phase under test: a fixed ellipse skips it (and its compile);
    # the centres pass only with --descan
    if phase == "pass0":
        return ["--calibration-frames", "8"]
    return ["--ellipse", "1.06,23"] + (["--descan", "plane"] if phase == "centers" else [])


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # e.g. "Exception ignored in _xla_gc_callback"
@pytest.mark.parametrize("sig", sorted(SIGNALS))
@pytest.mark.parametrize("phase", list(PHASES))
def test_a_signal_at_any_phase_leaves_only_the_input(tmp_path, monkeypatch, small_blocks, cube, phase, sig):
    src = tmp_path / "in.npy"
    np.save(src, cube)
    before = sha(src)
    monkeypatch.setenv("PRENET_TEST_HOLD", phase)
    monkeypatch.setenv("PRENET_TEST_HOLD_SIGNAL", sig)
    monkeypatch.setenv("PRENET_TEST_HOLD_TIMEOUT", "60")
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    rc, out, err = run_cli(src, "-o", tmp_path / "out.h5", *args_for(phase))
    signum, code = SIGNALS[sig]
    assert rc == code, err
    assert err == f"interrupted by SIG{sig} during {PHASES[phase]}: nothing was written, the input is unchanged\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]  # no output, no .partial, no figures
    assert sha(src) == before
    assert {s: signal.getsignal(s) for s in old} == old  # the handlers are given back


def test_a_run_left_alone_passes_every_phase(tmp_path, monkeypatch, small_blocks, cube):
    # the hook holds at a phase that is reached, and times out when no signal comes: the run
    # then completes, which shows each hold sits inside a real run and stops nothing by itself
    np.save(tmp_path / "in.npy", cube)
    monkeypatch.setenv("PRENET_TEST_HOLD", "stream")
    monkeypatch.setenv("PRENET_TEST_HOLD_TIMEOUT", "0")
    rc, out, err = run_cli(tmp_path / "in.npy", "-o", tmp_path / "out.h5", "--no-diagnostics", *args_for("stream"))
    assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.h5"]


def test_library_call_gives_ctrl_c_back_as_keyboard_interrupt(tmp_path, monkeypatch, small_blocks, cube):
    np.save(tmp_path / "in.npy", cube)
    monkeypatch.setenv("PRENET_TEST_HOLD", "stream")
    monkeypatch.setenv("PRENET_TEST_HOLD_SIGNAL", "INT")
    with pytest.raises(KeyboardInterrupt):
        preprocess_file(
            tmp_path / "in.npy",
            tmp_path / "out.h5",
            pipeline=pj.Pipeline.classical(batch_size=8),
            ellipse=pj.Ellipse(1.06, 0.4),
            progress=False,
            log=lambda s: None,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_library_call_hands_sigterm_to_the_callers_handler(tmp_path, monkeypatch, small_blocks, cube):
    np.save(tmp_path / "in.npy", cube)
    monkeypatch.setenv("PRENET_TEST_HOLD", "compile")
    monkeypatch.setenv("PRENET_TEST_HOLD_SIGNAL", "TERM")
    got = []
    old = signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
    try:
        with pytest.raises(Interrupted) as e:
            preprocess_file(
                tmp_path / "in.npy",
                tmp_path / "out.h5",
                pipeline=pj.Pipeline.classical(batch_size=8),
                ellipse=pj.Ellipse(1.06, 0.4),
                progress=False,
                log=lambda s: None,
            )
    finally:
        signal.signal(signal.SIGTERM, old)
    assert got == [signal.SIGTERM]  # once: after the clean-up, under the caller's own handler
    assert e.value.exit_code == 143 and e.value.phase == "compile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.slow
@pytest.mark.parametrize("phase,sig", [("stream", "INT"), ("pass0", "TERM")])
def test_a_real_signal_to_a_real_process(tmp_path, cube, phase, sig):
    """The command in its own process: the signal comes from outside, once the run
    has told the test (through a pipe) that it is at the phase."""
    src = tmp_path / "in.npy"
    np.save(src, np.tile(cube, (4, 1, 1, 1)))  # 24 x 8 frames
    before = sha(src)
    r, w = os.pipe()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PRENET_TEST_HOLD=phase, PRENET_TEST_HOLD_FD=str(w), PRENET_TEST_HOLD_TIMEOUT="300")
    argv = [
        sys.executable,
        "-c",
        CLI,
        "preprocess",
        str(src),
        "-o",
        str(tmp_path / "out.h5"),
        "--batch-size",
        "8",
        "--classical",
        *args_for(phase),
    ]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=(w,))
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], 600)
        assert ready, "the run never reached the phase"
        assert os.read(r, 100) == phase.encode() + b"\n"
        assert list(tmp_path.glob(".out.h5.*.partial")) or phase == "pass0"  # streaming: the temporary file is there
        proc.send_signal(SIGNALS[sig][0])
        out, err = proc.communicate(timeout=600)
    finally:
        os.close(r)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == SIGNALS[sig][1], err[-3000:]
    assert err.splitlines()[-1] == f"interrupted by SIG{sig} during {PHASES[phase]}: nothing was written, the input is unchanged"
    assert "Traceback" not in err and "Exception ignored" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
    assert sha(src) == before


@pytest.mark.parametrize("sig", sorted(SIGNALS))
@pytest.mark.parametrize("command", ["preprocess", "info"])
def test_a_signal_while_the_command_starts_up(tmp_path, monkeypatch, cube, command, sig):
    """Before any command runs (imports, the parser: seconds on a busy machine) a signal
    is recorded, not fatal: one line, the shell's exit code, nothing written. For
    ``preprocess`` it is handed to the run's own stop flag."""
    import prenet_jax.cli as cli

    src = tmp_path / "in.npy"
    np.save(src, cube)
    before = sha(src)
    real = cli.build_parser

    def build_parser_interrupted():
        signal.raise_signal(SIGNALS[sig][0])  # delivered now, inside the start-up
        return real()

    monkeypatch.setattr(cli, "build_parser", build_parser_interrupted)
    argv = ["preprocess", str(src), "-o", str(tmp_path / "out.h5"), "--no-progress"] if command == "preprocess" else ["info"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(argv)
    assert rc == SIGNALS[sig][1]
    assert err.getvalue().strip() == f"interrupted by SIG{sig} during start-up: nothing was done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"] and sha(src) == before
    # the handlers the command found are back
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_signal_handed_over_to_preprocess(tmp_path, cube):
    """A signal recorded by the start-up after its own check (``args.startup_signals``)
    stops the run at its first check, in the words of the run."""
    from prenet_jax.cli import build_parser

    src = tmp_path / "in.npy"
    np.save(src, cube)
    args = build_parser().parse_args(["preprocess", str(src), "-o", str(tmp_path / "out.h5"), "--no-progress", "--classical"])
    assert args.handles_signals
    args.startup_signals = [signal.SIGTERM]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = args.func(args)
    assert rc == 143
    assert err.getvalue().strip().splitlines()[-1] == "interrupted by SIGTERM during start-up: nothing was written, the input is unchanged"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def test_a_signal_in_a_run_of_many_files_keeps_the_finished_ones(tmp_path, monkeypatch, small_blocks, cube):
    """The second file is interrupted mid-stream: its output goes, the first file's stays,
    and a re-run with --resume finishes the rest without redoing the first."""
    for name in ("a", "b"):
        np.save(tmp_path / f"{name}.npy", cube)
    rc, _, err = run_cli(
        tmp_path / "a.npy", "-o", f"{tmp_path / 'out'}/", "--no-diagnostics", *args_for("stream")
    )  # a folder: one file into it
    assert rc == 0, err
    stamp = (tmp_path / "out" / "a_pre.h5").stat().st_mtime_ns
    monkeypatch.setenv("PRENET_TEST_HOLD", "stream")  # held once per run: in b, since a is skipped
    monkeypatch.setenv("PRENET_TEST_HOLD_SIGNAL", "TERM")
    rc, out, err = run_cli(
        tmp_path / "a.npy", tmp_path / "b.npy", "-o", tmp_path / "out", "--no-diagnostics", "--resume", *args_for("stream")
    )
    assert rc == 143, err
    assert "the finished outputs stay (rerun with --resume)" in err
    assert "| b.npy | interrupted |" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_pre.h5"]  # no b output, no .partial
    monkeypatch.delenv("PRENET_TEST_HOLD")
    rc, out, err = run_cli(
        tmp_path / "a.npy", tmp_path / "b.npy", "-o", tmp_path / "out", "--no-diagnostics", "--resume", *args_for("stream")
    )
    assert rc == 0 and "1 done, 1 skipped" in out, err
    assert (tmp_path / "out" / "a_pre.h5").stat().st_mtime_ns == stamp
