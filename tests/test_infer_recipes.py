"""The recipes in infer/: a folder of files in one process, a bad file reported, not fatal."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import prenet_jax as pj

ROOT = Path(__file__).resolve().parents[1]


def test_folder_recipe_goes_on_after_a_bad_file_and_reports_it(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for seed in (0, 1):
        np.save(raw / f"scan{seed}.npy", pj.synthetic_cube(scan=(4, 4), shape=(32, 32), radius=5.0, seed=seed)["cube"])
    (raw / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # an HDF5 signature, then nothing
    out, summary = tmp_path / "out", tmp_path / "summary.json"
    # a fixed ellipse (no pass 0) and no figures: only the recipe's own logic is slow to test
    cmd = [sys.executable, str(ROOT / "infer" / "folder.py"), str(raw), "-o", str(out), "--cpu", "--classical",
           "--ellipse", "1.05,30", "--no-diagnostics", "--batch-size", "8", "--summary", str(summary)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)

    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["scan0_pre.h5", "scan1_pre.h5"]
    s = json.loads(summary.read_text())
    assert [Path(d["input"]).name for d in s["done"]] == ["scan0.npy", "scan1.npy"]
    assert [d["frames"] for d in s["done"]] == [16, 16]
    assert [Path(f["input"]).name for f in s["failed"]] == ["broken.h5"]
    assert s["failed"][0]["error"].startswith("InputError")
    assert f"failed: {raw / 'broken.h5'}" in proc.stderr
    # a rerun skips what is done and still reports the bad file
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1
    s = json.loads(summary.read_text())
    assert s["done"] == [] and len(s["skipped"]) == 2 and len(s["failed"]) == 1
