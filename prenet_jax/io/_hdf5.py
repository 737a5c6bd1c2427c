"""HDF5 files: py4DSTEM/EMD 1.0 DataCubes, any 4-D dataset, Dectris ARINA/EIGER masters.

- py4DSTEM/EMD 1.0 files are recognised by their header and their one
  ``DataCube`` is picked; otherwise the one 4-D dataset in the file, or the
  dataset named by ``dataset``.
- Dectris ARINA/EIGER master files (``/entry/data/data_NNNNNN``, external links to
  ``<name>_data_NNNNNN.h5``) are read as one stack of frames, the links followed;
  the scan shape comes from ``--scan``, from the ARINA metadata file ``<name>.h5``
  next to the master, or is taken square when the frame count is a square.
- Compression filters: :mod:`hdf5plugin` is imported (when installed) before a
  file is opened, so bitshuffle/LZ4/Blosc/Zstd/... data can be read; a dataset
  whose filter is not available gets an error naming the filter and its package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._source import InputError, Source, _squeeze_leading, scan_guess

__all__ = ["HDF5Source", "StackSource", "open_hdf5", "register_filters", "missing_filters", "FILTERS"]

#: HDF5 filter ids -> (name, where it comes from), for errors that name a missing filter.
FILTERS: dict[int, tuple[str, str]] = {
    1: ("deflate (gzip)", "an HDF5 library built with zlib"),
    2: ("shuffle", "the HDF5 library"),
    3: ("fletcher32", "the HDF5 library"),
    4: ("szip", "an HDF5 library built with szip (conda's h5py has it)"),
    5: ("nbit", "the HDF5 library"),
    6: ("scaleoffset", "the HDF5 library"),
    307: ("bzip2", "hdf5plugin: pip install hdf5plugin"),
    32001: ("Blosc", "hdf5plugin: pip install hdf5plugin"),
    32004: ("LZ4", "hdf5plugin: pip install hdf5plugin"),
    32008: ("bitshuffle", "hdf5plugin: pip install hdf5plugin"),
    32013: ("ZFP", "hdf5plugin: pip install hdf5plugin"),
    32015: ("Zstandard", "hdf5plugin: pip install hdf5plugin"),
    32017: ("SZ", "hdf5plugin: pip install hdf5plugin"),
    32018: ("FCIDECOMP", "hdf5plugin: pip install hdf5plugin"),
    32024: ("SZ3", "hdf5plugin: pip install hdf5plugin"),
    32026: ("Blosc2", "hdf5plugin: pip install hdf5plugin"),
}

_PLUGINS: bool | None = None  # hdf5plugin imported (None: not tried yet)


def register_filters() -> bool:
    """Import :mod:`hdf5plugin` (if installed) so its compression filters register with HDF5.

    Returns
    -------
    bool
        True when hdf5plugin is loaded.
    """
    global _PLUGINS
    if _PLUGINS is None:
        try:
            import hdf5plugin  # noqa: F401  (registers bitshuffle, LZ4, Blosc, Zstd, ... with HDF5)

            _PLUGINS = True
        except ImportError:  # also a module made unimportable (sys.modules[...] = None)
            _PLUGINS = False
    return _PLUGINS


def missing_filters(ds) -> list[tuple[int, str]]:
    """The filters of dataset ``ds`` that this HDF5 library cannot apply.

    Parameters
    ----------
    ds : h5py.Dataset

    Returns
    -------
    list of (filter id, name)
    """
    import h5py

    out = []
    try:
        plist = ds.id.get_create_plist()
        n = plist.get_nfilters()
    except Exception:
        return out
    for i in range(n):
        info = plist.get_filter(i)
        fid = int(info[0])
        if not h5py.h5z.filter_avail(fid):
            name = info[3].decode(errors="replace") if isinstance(info[3], bytes) else str(info[3])
            out.append((fid, FILTERS.get(fid, (name or "unknown", ""))[0]))
    return out


def filter_error(what: str, missing: list[tuple[int, str]]) -> InputError:
    """The :class:`InputError` for data compressed with filters that are not available:
    the filters by name and id, and the package that provides them."""
    names = ", ".join(f"{name} (HDF5 filter {fid})" for fid, name in missing)
    wheres = {FILTERS.get(fid, ("", ""))[1] for fid, _ in missing}
    if any(w.startswith("hdf5plugin") for w in wheres):
        fix = (
            "hdf5plugin is installed but does not register it; check its version (pip install -U hdf5plugin)"
            if register_filters()
            else "install the filters: pip install hdf5plugin (or pip install 'prenet-jax[io]')"
        )
    elif wheres - {""}:
        fix = "it comes with " + " / ".join(sorted(wheres - {""}))
    else:
        fix = "install the HDF5 plugin that provides it and point HDF5_PLUGIN_PATH at its folder"
    return InputError(f"{what} is compressed with {names}, which this HDF5 library does not have: {fix}")


class HDF5Source(Source):
    """One dataset of an HDF5 file, 4-D or a 3-D stack viewed with ``scan``.

    Parameters
    ----------
    path : the file
    f : the open ``h5py.File`` (closed by :meth:`close`)
    ds : the ``h5py.Dataset``
    kind : ``"emd"`` or ``"hdf5"``
    scan : ``(Rx, Ry)`` of a 3-D stack, else None
    name : the dataset's path as the user names it (a link's path in this file), default ``ds.name``
    """

    def __init__(self, path: Path, f, ds, kind: str, scan, name: str | None = None):
        self._f = f
        self._ds = ds
        self.dataset = name or ds.name
        self.kind = kind
        super().__init__(path, ds.shape, ds.dtype, scan)
        self.dataset = name or ds.name
        if ds.chunks is not None and not self._stack:
            ch = ds.chunks[self._lead :]
            self.scan_chunks = (int(ch[0]), int(ch[1]))
        missing = missing_filters(ds)
        if missing:
            try:  # an optional filter may have been skipped when the data were written
                ds[(0,) * ds.ndim]
            except Exception:
                raise filter_error(self._what(), missing) from None

    def _failure_hint(self, e: BaseException) -> str:
        missing = missing_filters(self._ds)
        return str(filter_error("the data", missing)) if missing else super()._failure_hint(e)

    def _sel(self, *idx):
        return (0,) * self._lead + idx

    def _read_4d(self, i0, i1, j0, j1):
        return np.asarray(self._ds[self._sel(slice(i0, i1), slice(j0, j1))])

    def _read_row_cols(self, i, js):
        # h5py point selection along one axis: only the chunks holding these frames are read.
        return np.asarray(self._ds[self._sel(i, list(int(j) for j in js))])

    def _read_flat(self, a, b):
        return np.asarray(self._ds[self._sel(slice(a, b))])

    def close(self):
        try:
            self._f.close()
        except Exception:
            pass


class StackSource(Source):
    """Several ``(n_k, H, W)`` datasets of one file read as one stack of frames,
    viewed as a cube ``(Rx, Ry, H, W)`` (a Dectris master's ``data_NNNNNN`` parts).

    Parameters
    ----------
    path : the file
    f : the open ``h5py.File`` (closed by :meth:`close`)
    parts : ``[(name, dataset)]`` in frame order, all of the same frame shape and dtype
    kind : the reader's name, e.g. ``"hdf5:dectris"``
    scan : ``(Rx, Ry)`` with ``Rx * Ry`` = the total frame count
    """

    def __init__(self, path: Path, f, parts: list[tuple[str, Any]], kind: str, scan):
        self._f = f
        self._parts = [ds for _, ds in parts]
        self.kind = kind
        self.dataset = parts[0][0] if len(parts) == 1 else f"{parts[0][0]}..{parts[-1][0].rsplit('/', 1)[-1]}"
        n = sum(int(ds.shape[0]) for ds in self._parts)
        self._starts = np.cumsum([0] + [int(ds.shape[0]) for ds in self._parts])
        super().__init__(path, (n,) + tuple(self._parts[0].shape[1:]), self._parts[0].dtype, scan)
        for name, ds in parts:
            missing = missing_filters(ds)
            if missing:
                try:
                    ds[(0,) * ds.ndim]
                except Exception:
                    raise filter_error(f"{path}:{name}", missing) from None

    def _failure_hint(self, e: BaseException) -> str:
        missing = sorted({m for ds in self._parts for m in missing_filters(ds)})
        return str(filter_error("the data", missing)) if missing else super()._failure_hint(e)

    def _read_flat(self, a, b):
        out = []
        for k, ds in enumerate(self._parts):
            s0, s1 = int(self._starts[k]), int(self._starts[k + 1])
            lo, hi = max(a, s0), min(b, s1)
            if lo < hi:
                out.append(np.asarray(ds[lo - s0 : hi - s0]))
        return out[0] if len(out) == 1 else np.concatenate(out)

    def close(self):
        try:
            self._f.close()
        except Exception:
            pass


def _describe_datasets(items: Sequence[tuple[str, tuple, Any]]) -> str:
    return "; ".join(f"{n} {tuple(s)} {d}" for n, s, d in items[:12]) + (" ..." if len(items) > 12 else "")


def _open_file(path: Path):
    import h5py

    register_filters()
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path} cannot be opened as HDF5 ({e}); is it damaged or still being written?") from None


def open_hdf5(path: Path, dataset: str | None, scan) -> Source:
    """Open the cube of an HDF5 file (see the module's description of what is picked).

    Parameters
    ----------
    path : the HDF5 file
    dataset : the dataset's path in the file, or None to pick it
    scan : ``(Rx, Ry)`` for a 3-D stack of frames, or None

    Returns
    -------
    Source
    """
    import h5py

    f = _open_file(path)
    try:
        is_emd = f.attrs.get("emd_group_type") in ("file", b"file")
        dectris = _dectris_parts(f)
        if dataset:
            obj = _get_dataset(f, path, dataset)
            kind = "hdf5:dectris" if dectris is not None else "emd" if is_emd else "hdf5"
            if kind == "hdf5:dectris" and scan is None and len(_squeeze_leading(obj.shape)) == 3:
                notes: list[str] = []
                scan = _dectris_scan(path, f, int(_squeeze_leading(obj.shape)[0]), notes)
                src = HDF5Source(path, f, obj, kind, scan, name=_user_name(f, obj, dataset))
                src.notes.extend(notes)
                _dectris_metadata(src, f)
                return src
        else:
            obj, kind = _pick_cube(f, path, is_emd, dectris, scan)
            if obj is None:
                return _open_dectris(path, f, dectris, scan)
        if not isinstance(obj, h5py.Dataset):
            raise InputError(f"'{dataset}' in {path} is not a dataset")
        src = HDF5Source(path, f, obj, kind, scan, name=_user_name(f, obj, dataset))
        if kind == "emd":
            src.calibration = _emd_calibration(obj)
            root = obj.name.strip("/").split("/")[0]
            if f"{root}/metadatabundle/preprocessing" in f:
                src.notes.append(f"{path.name} was already preprocessed by prenet-jax; it will be processed again")
        elif kind == "hdf5:dectris":
            _dectris_metadata(src, f)
        else:
            _generic_saturation(src, obj)
        return src
    except BaseException:
        f.close()
        raise


def _pick_cube(f, path: Path, is_emd: bool, dectris, scan):
    """``(dataset, kind)`` of the cube in a file opened without ``--dataset``: the one
    py4DSTEM DataCube, else the one 4-D dataset, else (``dataset`` None) the Dectris
    data files, else the one 3-D stack when ``scan`` is given; several or none is an
    :class:`InputError` that names what was found."""
    if is_emd:
        cubes = [ds for ds in _emd_datacubes(f)]
        if len(cubes) == 1:
            return cubes[0], "emd"
        if len(cubes) > 1:
            raise InputError(f"{path} holds several py4DSTEM DataCubes: {', '.join(c.name for c in cubes)}; pick one with --dataset")
    found = _datasets(f)
    four = [(n, s, d) for n, s, d in found if len(_squeeze_leading(s)) == 4 and np.dtype(d).kind in "iuf"]
    if len(four) == 1:
        return f[four[0][0]], "hdf5"
    if len(four) > 1:
        raise InputError(f"{path} holds several 4-D datasets: {_describe_datasets(four)}; pick one with --dataset PATH")
    if dectris is not None:
        return None, "hdf5:dectris"
    three = [(n, s, d) for n, s, d in found if len(_squeeze_leading(s)) == 3 and np.dtype(d).kind in "iuf"]
    if len(three) == 1 and scan is not None:
        return f[three[0][0]], "hdf5"
    raise InputError(_no_cube_message(path, found, three))


def _get_dataset(f, path: Path, dataset: str):
    """The dataset at ``dataset`` (an EMD array node: its ``data``), following links."""
    import h5py

    try:
        obj = f[dataset] if dataset in f else None
    except (KeyError, OSError):  # a link that does not resolve
        obj = None
    if obj is None:
        link = _link(f, dataset)
        if isinstance(link, h5py.ExternalLink):
            raise InputError(
                f"'{dataset}' in {path} links to {link.path} in {link.filename}, which cannot be opened: "
                f"is {link.filename} missing from {path.parent}? Keep the data files next to the master file"
            )
        found = _datasets(f)
        raise InputError(f"{path} has no dataset '{dataset}'; it has: {_describe_datasets(found) or 'no datasets'}")
    if isinstance(obj, h5py.Group) and isinstance(obj.get("data"), h5py.Dataset):
        obj = obj["data"]  # an EMD array node: its data
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"'{dataset}' in {path} is a group, not a dataset; give the path of the dataset (e.g. {dataset.rstrip('/')}/data)")
    return obj


def _user_name(f, obj, dataset: str | None) -> str | None:
    """The name a dataset behind an external link goes by: the link's path in this
    file (``/entry/data/data_000001``), not its path in the linked file."""
    if dataset and obj.file.filename != f.filename:
        return "/" + dataset.strip("/")
    return None


def _link(f, name: str):
    try:
        return f.get(name, getlink=True)
    except Exception:
        return None


def _no_cube_message(path: Path, found, three) -> str:
    """No 4-D dataset: the 2- to 4-D datasets (external links included) and the
    ``--dataset ... --scan ...`` line that reads a stack."""
    arrays = [(n, s, d) for n, s, d in found if 2 <= len(_squeeze_leading(s)) <= 4 and np.dtype(d).kind in "iuf"]
    listing = _describe_datasets(arrays) if arrays else "no 2- to 4-D numeric datasets"
    msg = f"{path} holds no 4-D dataset (Rx, Ry, Qx, Qy); its arrays: {listing}."
    if three:
        n, s, _ = max(three, key=lambda t: math.prod(t[1]))
        frames = int(_squeeze_leading(s)[0])
        rx, ry = scan_guess(frames)
        msg += (
            f" A 3-D stack of frames is read with --dataset PATH --scan RX,RY (RX*RY = frames), e.g. "
            f"prenet-jax preprocess {path.name} -o OUT.h5 --dataset {n} --scan {rx},{ry}"
        )
    return msg


def _datasets(f) -> list[tuple[str, tuple, Any]]:
    """``[(path, shape, dtype)]`` of every dataset in the file, datasets behind
    external links included (under the link's path)."""
    import h5py

    out = []
    seen = set()

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and obj.shape is not None:
            out.append(("/" + name, obj.shape, obj.dtype))
            seen.add("/" + name)

    f.visititems(visit)
    links = []

    def visit_links(name, link):
        if isinstance(link, h5py.ExternalLink):
            links.append("/" + name)

    try:
        f.visititems_links(visit_links)
    except Exception:
        pass
    for name in links:
        try:
            obj = f[name]
        except Exception:  # the linked file is missing: nothing to list
            continue
        if isinstance(obj, h5py.Dataset) and obj.shape is not None and name not in seen:
            out.append((name, obj.shape, obj.dtype))
        elif isinstance(obj, h5py.Group):
            obj.visititems(
                lambda n, o, base=name: (
                    out.append((f"{base}/{n}", o.shape, o.dtype)) if isinstance(o, h5py.Dataset) and o.shape is not None else None
                )
            )
    return out


# ----------------------------------------------------------------------------- Dectris


_DETECTOR = "entry/instrument/detector"


def _dectris_parts(f) -> list[str] | None:
    """The ``/entry/data/data_NNNNNN`` members of a Dectris (ARINA/EIGER) master
    file, in order; None for other files."""
    import h5py

    grp = f.get("entry/data")
    if not isinstance(grp, h5py.Group):
        return None
    names = sorted(k for k in grp.keys() if k.startswith("data_") and k[5:].isdigit())
    if not names:
        return None
    desc = f.get(f"{_DETECTOR}/description")
    definition = f.get("entry/definition")
    is_dectris = (isinstance(desc, h5py.Dataset) and b"dectris" in bytes(np.asarray(desc[()]).tobytes()).lower()) or (
        isinstance(definition, h5py.Dataset) and b"NXmx" in bytes(np.asarray(definition[()]).tobytes())
    )
    return [f"/entry/data/{k}" for k in names] if is_dectris else None


def _open_dectris(path: Path, f, names: list[str], scan) -> Source:
    """The frames of a Dectris master file's ``data_NNNNNN`` parts, as one cube."""
    parts = []
    for name in names:
        obj = _get_dataset(f, path, name)
        if len(_squeeze_leading(obj.shape)) != 3:
            raise InputError(f"{path}:{name} has shape {obj.shape}; a Dectris data file holds a stack (N, H, W)")
        parts.append((name, obj))
    shapes = {tuple(ds.shape[1:]) for _, ds in parts}
    dtypes = {ds.dtype for _, ds in parts}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise InputError(f"{path}: the data files differ in frame shape or dtype ({shapes}, {dtypes}); pick one with --dataset")
    n = sum(int(ds.shape[0]) for _, ds in parts)
    notes: list[str] = []
    if scan is None:
        scan = _dectris_scan(path, f, n, notes)
    src = StackSource(path, f, parts, "hdf5:dectris", scan)
    src.notes.extend(notes)
    probe = np.unique(np.array([0, n // 2, n - 1], np.int64))  # one chunk each: Dectris stores a frame a chunk
    try:
        if not src.read_frames(probe).any():
            src.notes.append(
                f"{path.name}: the first, middle and last frames hold only zeros (an empty or blanked acquisition?); "
                "all-zero frames are flagged empty and left out of the means"
            )
    except InputError:
        pass  # the run's reads report it
    if len(parts) > 1:
        src.notes.append(f"{path.name}: {len(parts)} data files ({names[0]} ... {names[-1]}) read as one stack of {n} frames")
    _dectris_metadata(src, f)
    return src


def _dectris_scan(path: Path, f, n: int, notes: list[str]) -> tuple[int, int]:
    """The scan shape of a Dectris stack of ``n`` frames: the ARINA metadata file's
    ``NumPixelsY x NumPixelsX``, else a square scan when ``n`` is a square, else an
    :class:`InputError` asking for ``--scan``."""
    meta = _arina_scan(path)
    if meta is not None and meta[0] * meta[1] == n:
        notes.append(f"scan {meta[0]}x{meta[1]} from the ARINA metadata file {_arina_meta_path(path).name} (NumPixelsY x NumPixelsX)")
        return meta
    r = math.isqrt(n)
    if r * r == n:
        notes.append(
            f"{path.name} is a stack of {n} frames and does not give the scan shape: taken as a square scan {r}x{r}; give --scan RX,RY if it is not"
        )
        return (r, r)
    a, b = scan_guess(n)
    raise InputError(
        f"{path.name} is a stack of {n} frames and does not give the scan shape (and {n} is not a square): "
        f"give it with --scan RX,RY (RX*RY = {n}, e.g. --scan {a},{b})"
    )


def _arina_meta_path(path: Path) -> Path:
    name = path.name
    base = name[: -len("_master.h5")] if name.endswith("_master.h5") else path.stem
    return path.with_name(base + ".h5")


def _arina_scan(path: Path) -> tuple[int, int] | None:
    """``(NumPixelsY, NumPixelsX)`` from the ARINA metadata file ``<name>.h5`` beside
    ``<name>_master.h5`` (its ``STEM Metadata`` group), or None."""
    import h5py

    meta = _arina_meta_path(path)
    if meta == path or not meta.is_file():
        return None
    try:
        with h5py.File(meta, "r") as g:
            attrs = g["STEM Metadata"].attrs
            nx = int(np.ravel(attrs["NumPixelsX"])[0])
            ny = int(np.ravel(attrs["NumPixelsY"])[0])
    except Exception:
        return None
    return (ny, nx) if nx > 0 and ny > 0 else None


def _scalar(f, key: str):
    ds = f.get(key)
    try:
        v = np.asarray(ds[()]) if ds is not None else None
    except Exception:
        return None
    if v is None or v.size != 1 or v.dtype.kind not in "iuf":
        return None
    return v.item()


def _dectris_metadata(src: Source, f) -> None:
    """The saturation level of a Dectris master file (:attr:`Source.saturation`)."""
    det = _DETECTOR
    for key, what in (
        (f"{det}/saturation_value", "the Dectris saturation_value"),
        (f"{det}/detectorSpecific/countrate_correction_count_cutoff", "the Dectris countrate_correction_count_cutoff"),
    ):
        v = _scalar(f, key)
        if v is not None and v > 0:
            src.saturation, src.saturation_from = float(v), f"{what} {v:g} (/{key})"
            break
    else:
        bits = _scalar(f, f"{det}/bit_depth_readout")
        if bits is not None and 0 < bits <= 32:
            src.saturation, src.saturation_from = (
                float(2 ** int(bits) - 1),
                f"the Dectris bit_depth_readout {int(bits)} (/{det}/bit_depth_readout)",
            )


def _generic_saturation(src: Source, ds) -> None:
    """A saturation level stored as an attribute of the dataset (``saturation_value``,
    ``saturation_level``, ``saturation``), if any."""
    for key in ("saturation_value", "saturation_level", "saturation"):
        v = ds.attrs.get(key)
        try:
            v = float(np.ravel(v)[0]) if v is not None else None
        except (TypeError, ValueError):
            v = None
        if v is not None and np.isfinite(v) and v > 0:
            src.saturation, src.saturation_from = v, f"the dataset's '{key}' attribute {v:g}"
            return


def _emd_datacubes(f) -> list:
    import h5py

    out = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _attr(obj, "python_class") == "DataCube" and isinstance(obj.get("data"), h5py.Dataset):
            out.append(obj["data"])

    f.visititems(visit)
    return out


def _attr(obj, key: str, default=None):
    v = obj.attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _emd_calibration(ds) -> dict:
    """Pixel sizes and units of the py4DSTEM Calibration of the root holding ``ds``."""
    f = ds.file
    root = ds.name.strip("/").split("/")[0]
    grp = f.get(f"{root}/metadatabundle/calibration")
    out: dict[str, Any] = {}
    if grp is None:
        return out
    for k in ("Q_pixel_size", "R_pixel_size", "Q_pixel_units", "R_pixel_units"):
        if k in grp:
            v = grp[k][()]
            out[k] = v.decode() if isinstance(v, bytes) else (v.item() if hasattr(v, "item") else v)
    return out
