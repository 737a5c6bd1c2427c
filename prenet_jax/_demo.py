"""``prenet-jax demo``: the main job on an embedded default.

Builds a small synthetic 4D-STEM cube with a known descan plane, jitter, ellipse
and Poisson noise (seconds, from a fixed seed), preprocesses it with the bundled
weights (or the classical methods while none ship), and reports the errors
against the known truth.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="preprocess the built-in demo cube and report errors against its known truth")
    p.add_argument("-o", "--output", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--classical", action="store_true", help="use the classical methods even if weights ship")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import jax

    import prenet_jax as pj

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ell = pj.Ellipse(1.08, 0.5)
    t0 = time.perf_counter()
    d = pj.synthetic_cube(scan=(16, 16), shape=(128, 128), radius=14.0, ellipse=ell, descan=(0.3, -0.2, 0.1, 0.25), jitter=0.8, dose=2e5, seed=7)
    print(f"demo cube {d['cube'].shape} float32, dose 2e5 e/pattern, true ellipse ratio {ell.ratio:.3f} angle {np.degrees(ell.angle):.1f} deg ({time.perf_counter() - t0:.1f} s)")
    pipe = None
    if not args.classical:
        try:
            pipe = pj.Pipeline.from_pretrained()
        except FileNotFoundError:
            print("no trained weights ship with this version: using the classical methods")
    if pipe is None:
        pipe = pj.Pipeline.classical()
    print(f"devices: {', '.join(d_.device_kind for d_ in jax.local_devices())}; methods: denoise={pipe.config.denoise_method}, center={pipe.config.center_method}, ellipse={pipe.config.ellipse_method}")
    t0 = time.perf_counter()
    res = pipe.preprocess(d["cube"], progress=True)
    dt = time.perf_counter() - t0
    err = np.linalg.norm(res.centers - d["centers"], axis=-1)
    spread_in = d["centers"].reshape(-1, 2).std(0)
    ideal = d["ideal"]
    rel = float(np.sqrt(np.mean((res.data - ideal) ** 2)) / ideal.max())
    print(f"{res.data.shape[0] * res.data.shape[1]} frames in {dt:.1f} s")
    print(f"centre error vs truth: mean {err.mean():.3f} px, 95th pct {np.percentile(err, 95):.3f} px (centre spread in the raw data: row {spread_in[0]:.2f} px, col {spread_in[1]:.2f} px)")
    print(f"ellipse found: ratio {res.ellipse.ratio:.4f} (true {ell.ratio:.4f}), angle {np.degrees(res.ellipse.angle):.2f} deg (true {np.degrees(ell.angle):.2f})")
    print(f"corrected vs ideal cube: RMS error {rel:.4f} of the peak")
    np.savez_compressed(out / "demo_result.npz", data=res.data.astype(np.float32), centers=res.centers, true_centers=d["centers"], ellipse=[res.ellipse.ratio, res.ellipse.angle])
    _figure(out / "demo.png", d["cube"], res)
    print(f"wrote {out / 'demo_result.npz'} and {out / 'demo.png'}")
    return 0


def _figure(path: Path, cube: np.ndarray, res) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(16, 4))
    ax[0].imshow(np.sqrt(cube.mean((0, 1))), cmap="magma")
    ax[0].set_title("mean pattern, raw (sqrt)")
    ax[1].imshow(np.sqrt(np.maximum(res.data.mean((0, 1)), 0)), cmap="magma")
    ax[1].set_title("mean pattern, corrected (sqrt)")
    for a, k, name in ((ax[2], 0, "row"), (ax[3], 1, "col")):
        im = a.imshow(res.centers[..., k], cmap="coolwarm")
        a.set_title(f"beam centre {name} (px)")
        fig.colorbar(im, ax=a)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
