"""Why the output fills masked pixels instead of writing NaN: what py4DSTEM does with a NaN.

Run with an interpreter that has py4DSTEM (e.g. the peer environment of
benchmarks/EVAL.md): a 4 x 4 scan of Poisson frames, once as is and once with one
detector pixel NaN in every frame (a masked pixel written as NaN), through
``DataCube.get_virtual_image`` (an annulus containing the pixel) and ``get_dp_mean``.

    $PRENET_PY4DSTEM_PYTHON benchmarks/py4dstem_nan.py

Measured with py4DSTEM 0.14.18 (2026-11-30): filled, no NaN anywhere; with the one NaN
pixel, 16 of 16 virtual-image pixels are NaN (every virtual image that covers the pixel
is lost) and the mean pattern has the NaN pixel. So the output holds filled values and
the record holds the mask (docs/preprocess.md, "Detector masks").
"""

import warnings

import numpy as np
import py4DSTEM

warnings.filterwarnings("ignore")
rng = np.random.default_rng(0)
data = rng.poisson(5.0, (4, 4, 32, 32)).astype(np.float32)
for label, cube in (("filled", data.copy()), ("NaN", data.copy())):
    if label == "NaN":
        cube[:, :, 10, 20] = np.nan  # one masked detector pixel, NaN in every frame
    dc = py4DSTEM.DataCube(cube)
    vi = dc.get_virtual_image(mode="annulus", geometry=((16, 16), (4, 14)), name="v", returncalc=True, verbose=False)
    dp = dc.get_dp_mean(returncalc=True)
    vi_arr = np.asarray(vi.data)
    dp_arr = np.asarray(dp.data)
    print(
        label,
        "virtual image NaN pixels:",
        int(np.isnan(vi_arr).sum()),
        "of",
        vi_arr.size,
        "| mean pattern NaN pixels:",
        int(np.isnan(dp_arr).sum()),
    )
print("py4DSTEM", py4DSTEM.__version__)
