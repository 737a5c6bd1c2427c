"""The evaluation on real recorded files: the default command beside the classical methods
and py4DSTEM, where no truth is known.

On a recording nothing tells the true beam centre, so the reference is the agreement
of independent estimators on the raw frames: the masked centre of mass and Friedel
symmetry (ours), and py4DSTEM's ``get_origin`` and ``get_origin_friedel`` (in their
own interpreter, :mod:`prenet_jax.evaluation.peers`). Where at least
:data:`CONSENSUS_MIN` of them lie within :data:`AGREE_PX` of their median, their mean
is the frame's consensus; elsewhere the frame has none, and the report says how many.

Each file goes through exactly the command a user types, ``prenet-jax preprocess FILE
-o OUT.h5`` (a subprocess: the default weights, checks and fallbacks included), and the
output's record gives our centres, flags, saturation and ellipse. py4DSTEM's ellipse is
its ``fit_ellipse_amorphous_ring`` on the mean of the frames recentred on the consensus
(on ours where there is none), in the disk-edge annulus our fit found.

:func:`evaluate_real` returns one row per file and writes ``real.md``, ``real.json``,
a figure per file (the mean frame with every method's centre, the per-frame offsets
from the consensus) and the command's own diagnostics figures.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..conventions import FLAG_NAMES
from .peers import run_peer

__all__ = ["AGREE_PX", "CONSENSUS_MIN", "REAL_FRAMES", "consensus", "edge_circle", "evaluate_real", "write_real_report"]

#: Frames sampled evenly across each file for the classical and peer estimates.
REAL_FRAMES = 256
#: Estimators within this distance (px) of their median agree on a frame.
AGREE_PX = 1.0
#: Agreeing estimators a frame needs for a consensus (of four: CoM, Friedel, py4DSTEM x2;
#: of two, both, without py4DSTEM).
CONSENSUS_MIN = 3
#: Issue 28's target: our centre within this distance (px) of the consensus.
TARGET_PX = 0.6

_ESTIMATORS = ("com", "friedel", "py4dstem_origin", "py4dstem_friedel")
_LABELS = {
    "ours": "prenet-jax default",
    "com": "centre of mass",
    "friedel": "Friedel symmetry",
    "py4dstem_origin": "py4DSTEM get_origin",
    "py4dstem_friedel": "py4DSTEM get_origin_friedel",
    "edge_circle": "disk-edge circle fit",
}
_COLUMNS = ("ours",) + _ESTIMATORS + ("edge_circle",)
_RECORD = "datacube_root/metadatabundle/preprocessing"


@dataclasses.dataclass
class _Run:
    """What ``prenet-jax preprocess`` did with one file."""

    rc: int
    stdout: str
    stderr: str
    seconds: float


def _run_command(path: Path, out: Path, extra: Sequence[str]) -> _Run:
    """``prenet-jax preprocess path -o out`` in a fresh interpreter, as a user runs it."""
    t0 = time.perf_counter()
    # --no-progress: no progress bars in the captured log; the command is otherwise the user's.
    cmd = [sys.executable, "-m", "prenet_jax.cli", "preprocess", str(path), "-o", str(out), "--overwrite", "--no-progress", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return _Run(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def _read_record(out: Path) -> dict:
    """The fields of the output's preprocessing record this evaluation reports."""
    import h5py

    rec = {}
    with h5py.File(out, "r") as f:
        g = f[_RECORD]
        for k in g:
            if isinstance(g[k], h5py.Dataset):
                v = g[k][()]
                rec[k] = v.decode() if isinstance(v, bytes) else v
    return rec


def _sample(n: int, k: int) -> np.ndarray:
    """``k`` indices spread evenly over ``n`` (all of them when ``n <= k``)."""
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).round().astype(int))


def _classical(frames: np.ndarray) -> dict[str, np.ndarray]:
    """CoM, Friedel and the direct-beam test of the classical pipeline on the raw frames."""
    from ..pipeline import Pipeline

    got = Pipeline.classical().check_centers(frames)
    return {"com": got["com"], "friedel": got["friedel"], "beam": got["beam"]}


def edge_circle(frame: np.ndarray, saturation: float | None = None) -> np.ndarray:
    """The centre of a circle fitted to the direct disk's edge: a geometric reference.

    The disk is the connected region around the brightest pixel above half-way between
    the background (median) and the peak, or, in a saturated frame, the plateau at the
    saturation level. Its boundary pixels, less those on the frame's border (a disk cut
    off by the detector edge), are fitted by least squares with
    ``x^2 + y^2 + D x + E y + F = 0`` (Kasa). Unlike a centre of mass it is not pulled by
    bright lobes beside the disk, and unlike Friedel symmetry it needs no symmetric
    pattern, so on saturated, cut-off disks it is the estimate to compare with.

    Returns
    -------
    (row, col), NaN when fewer than 12 edge pixels are left
    """
    from scipy import ndimage

    f = np.asarray(frame, np.float64)
    if saturation is not None and np.any(f >= saturation):
        mask = f >= saturation
    else:
        sm = ndimage.uniform_filter(f, 3)
        mask = sm > 0.5 * (sm.max() + np.median(sm))
    lab, _ = ndimage.label(mask)
    peak = np.unravel_index(np.argmax(np.where(mask, ndimage.uniform_filter(f, 5), -np.inf)), f.shape)
    disk = ndimage.binary_fill_holes(lab == lab[peak])
    edge = disk & ~ndimage.binary_erosion(disk)
    edge[[0, -1], :] = False
    edge[:, [0, -1]] = False
    r, c = np.nonzero(edge)
    if r.size < 12:
        return np.full(2, np.nan)
    a = np.stack([r, c, np.ones_like(r)], -1).astype(np.float64)
    sol, *_ = np.linalg.lstsq(a, -(r.astype(np.float64) ** 2 + c.astype(np.float64) ** 2), rcond=None)
    return np.array([-sol[0] / 2, -sol[1] / 2])


def _peer_centres(frames: np.ndarray, notes: dict, log: Callable) -> dict[str, np.ndarray]:
    out = {}
    for task, name in (("get_origin", "py4dstem_origin"), ("get_origin_friedel", "py4dstem_friedel")):
        try:
            out[name], notes["py4dstem"] = run_peer("py4dstem", task, frames)
        except RuntimeError as err:  # a peer that fails is a note, not the end of the evaluation
            notes[name] = str(err).splitlines()[0][:200]
            log(f"  {name}: {notes[name]}")
    return out


def consensus(estimates: dict[str, np.ndarray], agree_px: float = AGREE_PX, need: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The per-frame consensus of independent centre estimates.

    Parameters
    ----------
    estimates : ``{name: (N, 2)}`` centres (NaN: the method failed on the frame)
    agree_px : estimators within this distance of their coordinate-wise median agree
    need : agreeing estimators a frame needs (default: :data:`CONSENSUS_MIN`, or all
        of them when there are fewer than four)

    Returns
    -------
    centre : (N, 2) the mean of the agreeing estimators; NaN where too few agree
    agreeing : (N,) how many agreed
    """
    stack = np.stack([estimates[k] for k in estimates])  # (M, N, 2)
    m = stack.shape[0]
    need = need if need is not None else (CONSENSUS_MIN if m >= 4 else m)
    med = np.nanmedian(stack, axis=0)
    near = np.linalg.norm(stack - med, axis=-1) <= agree_px  # NaN compares False
    count = near.sum(0)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(np.where(near[..., None], stack, 0.0), 0) / np.maximum(count, 1)[:, None]
    return np.where((count >= need)[:, None], mean, np.nan), count


def _dist_stats(d: np.ndarray) -> dict:
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"n": 0}
    return {"n": int(d.size), "median": float(np.median(d)), "p95": float(np.percentile(d, 95)), "max": float(d.max())}


def _flag_counts(flags: np.ndarray) -> dict[str, int]:
    flags = np.asarray(flags).astype(np.int64).ravel()
    return {name: int(((flags & bit) != 0).sum()) for bit, name in FLAG_NAMES.items() if ((flags & bit) != 0).any()}


def _fourier_recentre_mean(frames: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """The mean of frames each moved (Fourier shift) to put its centre on the frame centre."""
    h, w = frames.shape[-2:]
    ky = np.fft.fftfreq(h)[:, None]
    kx = np.fft.fftfreq(w)[None, :]
    c0 = np.array([(h - 1) / 2, (w - 1) / 2])
    acc = np.zeros((h, w))
    n = 0
    for f, c in zip(frames, centres, strict=True):
        if not np.all(np.isfinite(c)):
            continue
        d = c0 - c
        acc += np.fft.ifft2(np.fft.fft2(f.astype(np.float64)) * np.exp(-2j * np.pi * (ky * d[0] + kx * d[1]))).real
        n += 1
    return acc / max(n, 1)


def _peer_ellipse(mean: np.ndarray, radius: float, notes: dict) -> dict | None:
    """py4DSTEM's ring fit of the recentred mean, in the annulus about our disk edge."""
    if not (math.isfinite(radius) and radius > 0):
        return None
    h, w = mean.shape
    opts = {"centers": [[(h - 1) / 2, (w - 1) / 2]], "fitradii": [[0.7 * radius, 1.3 * radius]]}
    try:
        res, _ = run_peer("py4dstem", "fit_ellipse_amorphous_ring", mean[None].astype(np.float32), opts)
    except RuntimeError as err:
        notes["py4dstem_ring"] = str(err).splitlines()[0][:200]
        return None
    _, _, a, b, theta = (float(v) for v in res[0])
    if not all(math.isfinite(v) for v in (a, b, theta)) or min(a, b) <= 0:
        notes["py4dstem_ring"] = "the ring fit failed on this mean"
        return None
    from ..preprocess import ellipse_from_py4dstem

    e = ellipse_from_py4dstem(a, b, theta)
    return {"ratio": float(e.ratio), "angle_deg": float(np.degrees(e.angle)), "a": max(a, b), "b": min(a, b)}


def _lines(text: str, start: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip().startswith(start)]


def _one_file(path: Path, out_dir: Path, peers: dict, extra: Sequence[str], log: Callable) -> dict:
    from ..io import InputError, open_input

    row: dict = {"file": path.name, "path": str(path)}
    out = out_dir / f"{path.stem}.h5"
    run = _run_command(path, out, extra)
    (out_dir / f"{path.stem}.log").write_text(run.stdout + run.stderr)
    row.update(rc=run.rc, seconds=run.seconds, warnings=_lines(run.stdout + run.stderr, "warning:"))
    row["errors"] = _lines(run.stderr, "error:") + _lines(run.stderr, "prenet-jax preprocess: error:")
    row["input_line"] = (_lines(run.stdout, "input:") or [""])[0]
    row["checks_line"] = (_lines(run.stdout, "checks:") or [""])[0]
    row["traceback"] = "Traceback (most recent call last)" in run.stderr
    try:
        src = open_input(path)
    except InputError as err:
        row["open_error"] = str(err)
        return row
    row.update(scan=list(src.shape[:2]), frame=list(src.shape[2:]), dtype=str(src.dtype), format=src.kind)
    idx = _sample(src.n_frames, REAL_FRAMES)
    frames = np.asarray(src.read_frames(idx), np.float32)
    row["sampled"] = int(idx.size)
    row["all_zero"] = bool(not np.any(frames))
    est = _classical(frames)
    row["no_beam_frames"] = int((~est.pop("beam")).sum())
    sat = src.saturation if src.saturation is not None else (float(np.iinfo(src.dtype).max) if src.dtype.kind in "ui" else None)
    edge = np.stack([edge_circle(f, sat) for f in frames])
    notes: dict = {}
    if "py4dstem" in peers:
        est.update(_peer_centres(frames, notes, log))
    row["notes"] = notes
    ours = None
    if run.rc == 0 and out.exists():
        rec = _read_record(out)
        # A run that found no beam moved nothing: its "centres" are the frame centre, no estimate.
        if rec.get("check_center_used", "") != "none":
            ours = np.stack([np.asarray(rec["qx0"]).ravel(), np.asarray(rec["qy0"]).ravel()], -1)[idx]
        row.update(
            flags=_flag_counts(rec["flags"]),
            saturation=None if not np.isfinite(rec.get("saturation_level", np.nan)) else float(rec["saturation_level"]),
            center_used=rec.get("check_center_used", ""),
            ellipse={
                "source": rec.get("ellipse_source", ""),
                "ratio": float(rec.get("ellipse_ratio", np.nan)),
                "angle_deg": float(np.degrees(rec.get("ellipse_angle", np.nan))),
                "radius": float(rec.get("ellipse_radius", np.nan)),
                "warning": rec.get("ellipse_warning", ""),
            },
        )
        for fig in out_dir.glob(f"{out.stem}_*.png"):  # the command's own diagnostics stay beside the report
            row.setdefault("diagnostics", []).append(fig.name)
    cons, agreeing = consensus({k: v for k, v in est.items() if k in _ESTIMATORS})
    row["consensus_frames"] = int(np.isfinite(cons[:, 0]).sum())
    row["agreeing"] = {str(k): int((agreeing == k).sum()) for k in np.unique(agreeing)}
    table = {}
    named = {"ours": ours} if ours is not None else {}
    named.update({k: est[k] for k in _ESTIMATORS if k in est})
    named["edge_circle"] = edge
    for k, v in named.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a method that failed on every frame: NaN
            mean, std = np.nanmean(v, 0), np.nanstd(v, 0)
        table[k] = {
            "mean": [float(x) for x in mean],
            "std": [float(x) for x in std],
            "to_consensus": _dist_stats(np.linalg.norm(v - cons, axis=-1)),
        }
    row["centres"] = table
    if ours is not None:
        row["ours_to_edge_circle"] = _dist_stats(np.linalg.norm(ours - edge, axis=-1))
    if ours is not None and "py4dstem" in peers and row.get("ellipse"):
        ref = np.where(np.isfinite(cons), cons, ours)
        row["py4dstem_ellipse"] = _peer_ellipse(_fourier_recentre_mean(frames, ref), row["ellipse"]["radius"], notes)
    row["figure"] = _figure(path, frames, named, cons, out_dir)
    return row


def _figure(path: Path, frames: np.ndarray, named: dict, cons: np.ndarray, out_dir: Path) -> str | None:
    """The mean raw frame with every method's mean centre, and the per-frame offsets."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ._figures import COLORS

    colors = dict(COLORS, ours="C3")
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.6))
    mean = frames.mean(0)
    ax[0].imshow(np.log1p(np.maximum(mean, 0)), cmap="magma")
    for k, v in named.items():
        c = np.nanmean(v, 0) if np.isfinite(v).any() else np.full(2, np.nan)
        if np.all(np.isfinite(c)):
            ax[0].plot(c[1], c[0], "+", ms=14, mew=1.6, color=colors.get(k, "w"), label=_LABELS[k])
    ax[0].set_title(f"{path.name}: mean of {frames.shape[0]} raw frames (log)")
    ax[0].legend(fontsize=7, loc="lower right")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames (a method failed everywhere)
        ref = np.where(np.isfinite(cons), cons, np.nanmedian(np.stack(list(named.values())), 0))
    for k, v in named.items():
        d = v - ref
        ax[1].plot(d[:, 1], d[:, 0], ".", ms=5, alpha=0.7, color=colors.get(k, "k"), label=_LABELS[k])
    ax[1].axhline(0, color="0.7", lw=0.5)
    ax[1].axvline(0, color="0.7", lw=0.5)
    ax[1].add_patch(plt.Circle((0, 0), TARGET_PX, fill=False, ls="--", color="k", lw=0.8))
    what = "the consensus" if np.isfinite(cons).any() else "the methods' median (no consensus)"
    ax[1].set_xlabel(f"col offset from {what} (px)")
    ax[1].set_ylabel("row offset (px)")
    ax[1].set_title(f"per frame, dashed: {TARGET_PX} px")
    ax[1].invert_yaxis()
    ax[1].set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    name = f"real_{path.stem}.png"
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return name


def evaluate_real(
    paths: Sequence[str | Path], out_dir, *, peers: dict | None = None, extra: Sequence[str] = (), log: Callable = print
) -> list[dict]:
    """Run the default command on each real file and compare it with the classical
    methods and py4DSTEM (see the module docstring).

    Parameters
    ----------
    paths : the recorded files (any format ``prenet-jax preprocess`` reads)
    out_dir : where the outputs, logs and figures go (created)
    peers : ``{peer: version}`` that run here (:func:`prenet_jax.evaluation.peers.available_peers`)
    extra : more arguments for every ``prenet-jax preprocess`` command
    log : progress lines

    Returns
    -------
    One dict per file (JSON-ready): the command's exit code, warnings and checks; our
    centres, flags, saturation and ellipse; each estimator's distance to the
    per-frame consensus; py4DSTEM's ellipse; the figure names.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in paths:
        p = Path(p)
        log(f"real file {p.name} ...")
        t0 = time.perf_counter()
        row = _one_file(p, out, peers or {}, extra, log)
        log(f"  rc {row['rc']}, {len(row['warnings'])} warning(s), {time.perf_counter() - t0:.0f} s")
        rows.append(row)
    return rows


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def write_real_report(rows: list[dict], out_dir, command: str | None = None, peers: dict | None = None) -> Path:
    """``real.md`` and ``real.json`` for the rows of :func:`evaluate_real`."""
    out = Path(out_dir)
    lines = ["# Real recorded files", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += [
        f"No truth is known on a recording. The reference is the per-frame consensus: at least {CONSENSUS_MIN} of "
        f"{', '.join(_LABELS[k] for k in _ESTIMATORS)} within {AGREE_PX:g} px of their median (both classical "
        f"estimators without py4DSTEM). py4DSTEM: {(peers or {}).get('py4dstem', 'not available')}. "
        f"Up to {REAL_FRAMES} frames per file, sampled evenly.",
        "",
        "| file | scan, frame | rc | warnings | centre used | flags | saturation | ellipse (ratio, angle, radius) | py4DSTEM ellipse |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        e = r.get("ellipse") or {}
        pe = r.get("py4dstem_ellipse")
        flags = ", ".join(f"{n} {v}" for n, v in (r.get("flags") or {}).items()) or "none"
        ell = (
            f"{_fmt(e.get('ratio'), 4)}, {_fmt(e.get('angle_deg'), 1)}°, {_fmt(e.get('radius'), 1)} px ({e.get('source', '')})"
            if e
            else "–"
        )
        lines.append(
            f"| {r['file']} | {r.get('scan', '?')}, {r.get('frame', '?')} {r.get('dtype', '')} | {r['rc']} | {len(r['warnings'])} | "
            f"{r.get('center_used', '–')} | {flags} | {_fmt(r.get('saturation'), 0)} | {ell} | "
            f"{(_fmt(pe['ratio'], 4) + ', ' + _fmt(pe['angle_deg'], 1) + '°') if pe else '–'} |"
        )
    lines += [
        "",
        f"Distance (px) of each method's centre to the consensus, median / 95th percentile / max over the frames "
        f"that have one (target for ours: {TARGET_PX} px):",
        "",
        "| file | frames with a consensus | "
        + " | ".join(_LABELS[k] for k in _COLUMNS)
        + " | prenet-jax default to the disk-edge circle fit (every frame) |",
        "|---|---|" + "---|" * (1 + len(_COLUMNS)),
    ]

    def cell(s: dict) -> str:
        return f"{_fmt(s.get('median'))} / {_fmt(s.get('p95'))} / {_fmt(s.get('max'))}" if s.get("n") else "–"

    for r in rows:
        c = r.get("centres", {})
        cells = [cell((c.get(k) or {}).get("to_consensus", {})) for k in _COLUMNS] + [cell(r.get("ours_to_edge_circle", {}))]
        if r.get("center_used") == "none":
            cells[0] = "no beam found: not centred"
        lines.append(f"| {r['file']} | {r.get('consensus_frames', 0)} of {r.get('sampled', 0)} | " + " | ".join(cells) + " |")
    lines += ["", "Mean centre (row, col) of each method over the sampled frames:", ""]
    for r in rows:
        c = r.get("centres", {})
        parts = [f"{_LABELS[k]} ({_fmt(v['mean'][0], 1)}, {_fmt(v['mean'][1], 1)})" for k, v in c.items()]
        lines.append(f"- **{r['file']}**: " + ("; ".join(parts) or "no centres"))
    lines += ["", "What each run said:", ""]
    for r in rows:
        said = r["warnings"] + r["errors"] + ([r["checks_line"]] if r["checks_line"] else [])
        if r.get("all_zero"):
            said.append("(every sampled frame of this file is zero)")
        if r.get("traceback"):
            said.append("A TRACEBACK was printed (a bug)")
        lines.append(f"- **{r['file']}** (rc {r['rc']}, {r['seconds']:.0f} s): " + (" / ".join(said) or "no warning"))
        for k, v in (r.get("notes") or {}).items():
            if k != "py4dstem":
                lines.append(f"  - {k}: {v}")
    for r in rows:
        if r.get("figure"):
            lines += ["", f"![{r['file']}]({r['figure']})", ""]
            lines += [
                f"*{r['file']}: left, the mean raw frame with each method's mean centre; right, each frame's centres minus the consensus.*"
            ]
        for d in r.get("diagnostics", []):
            lines += ["", f"![{d}]({d})"]
    path = out / "real.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "real.json").write_text(json.dumps(rows, indent=1, default=_json_default))
    return path


def _json_default(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)
