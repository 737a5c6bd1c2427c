"""Property-based tests of the readers and of the Pipeline on arbitrary input: random
shapes (odd and tiny frames), dtypes (integer, float, big-endian, bool, complex),
NaN/Inf, negative, all-zero and huge values. Each case gives a result of the right
shape or a clear ``ValueError`` (``InputError`` is one); never another exception, a
hang or a silent wrong shape.

Deterministic for CI (``derandomize``) and about a minute on two cores: the Pipeline
cases reuse one pipeline, so each (dtype, frame size) compiles once.
"""

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prenet_jax as pj
from prenet_jax.io import InputError, open_input

DTYPES = ["uint8", "<u2", ">u2", "int16", ">i4", "uint32", "int64", "float16", "<f4", ">f4", "<f8", ">f8", "bool", "complex64"]
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def arrays(draw, shapes):
    """An array of a random dtype, filled with one of: random values, zeros, extremes,
    negatives, or (floats) NaN/Inf sprinkled in."""
    shape = draw(shapes)
    dt = np.dtype(draw(st.sampled_from(DTYPES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["random", "zeros", "huge", "negative", "nonfinite"]))
    if dt.kind == "b":
        return (rng.random(shape) > 0.5).astype(dt)
    if dt.kind == "c":
        return (rng.random(shape) + 1j * rng.random(shape)).astype(dt)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        lo = info.min if kind in ("negative", "huge") else 0
        hi = info.max if kind == "huge" else min(info.max, 1000)
        a = rng.integers(lo, hi, shape, dtype=np.int64, endpoint=True) if hi <= np.iinfo(np.int64).max else rng.integers(0, 1000, shape)
        return np.zeros(shape, dt) if kind == "zeros" else a.astype(dt)
    a = rng.random(shape) * 100
    if kind == "zeros":
        a[:] = 0
    elif kind == "huge":
        a *= np.finfo(dt).max / 100
    elif kind == "negative":
        a -= 50
    elif kind == "nonfinite" and a.size:
        flat = a.reshape(-1)
        flat[rng.integers(0, flat.size, max(1, flat.size // 50))] = rng.choice([np.nan, np.inf, -np.inf])
    return a.astype(dt)


# ----------------------------------------------------------------------------- readers

shapes_on_disk = st.one_of(
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)),  # 4-D
    st.tuples(st.just(1), st.integers(1, 3), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),  # leading 1
    st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9)),  # a stack of frames
    st.tuples(st.integers(1, 9), st.integers(1, 9)),  # one image: refused
    st.tuples(st.integers(0, 2), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),  # maybe empty
)


@settings(max_examples=60, **SETTINGS)
@given(a=arrays(shapes_on_disk), fmt=st.sampled_from(["npy", "h5", "h5-chunked"]), data=st.data())
def test_readers_return_exactly_what_is_stored_or_a_clear_error(tmp_path_factory, a, fmt, data):
    d = tmp_path_factory.mktemp("fuzz")
    path = d / ("x.npy" if fmt == "npy" else "x.h5")
    if fmt == "npy":
        np.save(path, a)
    else:
        with h5py.File(path, "w") as f:
            chunks = tuple(max(1, s // 2) for s in a.shape) if fmt == "h5-chunked" and a.size else None
            f.create_dataset("data", data=a, chunks=chunks, compression="gzip" if chunks else None)
    core = a.shape[1:] if a.ndim == 5 else a.shape
    scan = None
    if len(core) == 3:
        n = core[0]
        scan = data.draw(st.sampled_from([(1, n), (n, 1)] + ([(2, n // 2)] if n % 2 == 0 else [])))
    try:
        src = open_input(path, scan=scan)
    except InputError as e:
        reason = str(e)
        assert a.ndim < 3 or a.dtype.kind not in "iuf" or a.size == 0 or (len(core) == 3 and scan is None), reason
        assert str(path) in reason or path.name in reason
        return
    with src:
        expect = a.reshape(a.shape[1:]) if a.ndim == 5 else a
        if len(core) == 3:
            expect = expect.reshape(scan + core[1:])
        assert src.shape == expect.shape and src.dtype == a.dtype and src.n_frames == expect.shape[0] * expect.shape[1]
        rx, ry = expect.shape[:2]
        i0 = data.draw(st.integers(0, rx - 1))
        j0 = data.draw(st.integers(0, ry - 1))
        i1 = data.draw(st.integers(i0 + 1, rx))
        j1 = data.draw(st.integers(j0 + 1, ry))
        np.testing.assert_array_equal(src.read_block(i0, i1, j0, j1), expect[i0:i1, j0:j1])
        idx = np.asarray(sorted(data.draw(st.sets(st.integers(0, rx * ry - 1), min_size=1, max_size=6))), np.int64)
        np.testing.assert_array_equal(src.read_frames(idx), expect.reshape((rx * ry,) + expect.shape[2:])[idx])


# ----------------------------------------------------------------------------- pipeline

PIPE = None


def pipeline():
    global PIPE
    if PIPE is None:  # one pipeline: each (dtype, size) compiles once over all the examples
        PIPE = pj.Pipeline.classical(batch_size=4)
    return PIPE


frame_shapes = st.tuples(st.integers(1, 4), st.sampled_from([5, 8, 13]), st.sampled_from([8, 11, 16]))


@settings(max_examples=30, **SETTINGS)
@given(a=arrays(frame_shapes), method=st.sampled_from(["find_centers", "denoise", "preprocess"]), fixed=st.booleans())
def test_pipeline_gives_the_right_shape_or_a_clear_value_error(a, method, fixed):
    pipe = pipeline()
    n, h, w = a.shape
    try:
        if method == "find_centers":
            out = pipe.find_centers(a)
            assert out.shape == (n, 2) and out.dtype == np.float64
        elif method == "denoise":
            out = pipe.denoise(a)
            assert out.shape == (n, h, w) and out.dtype == np.float32
        else:
            res = pipe.preprocess(a[None], ellipse=pj.Ellipse(1.05, 0.3) if fixed else None)
            out = res.data
            assert out.shape == (1, n, h, w) and res.centers.shape == (1, n, 2) and res.flags.shape == (1, n)
    except ValueError as e:  # the clear errors: rank, dtype, size, NaN/Inf, nothing to fit an ellipse to
        reason = str(e)
        expected = (
            a.dtype.kind not in "iuf"
            or min(h, w) < 8
            or (a.dtype.kind == "f" and not np.isfinite(a).all())
            or (method == "preprocess" and not fixed)
        )
        assert expected, reason
        return
    if a.dtype.kind in "iuf" and np.isfinite(a.astype(np.float64)).all() and np.abs(a.astype(np.float64)).max() < 1e30:
        assert np.isfinite(out).all()  # finite, representable input: finite output
