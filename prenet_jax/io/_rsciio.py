"""Detector formats read through RosettaSciIO (``.mib``, ``.blo``, ``.dm4``, EMPAD ``.xml``, ...), lazily (dask)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ._source import InputError, Source, _squeeze_leading

__all__ = ["DaskSource", "open_rsciio"]


class DaskSource(Source):
    """A dask (or numpy) array a RosettaSciIO reader returned, read block by block."""

    def __init__(self, path: Path, data, kind: str, scan, calibration: dict):
        self._data = data
        self.kind = kind
        super().__init__(path, data.shape, data.dtype, scan)
        # a stack's navigation axis is not the scan: keep only the detector calibration
        self.calibration = {k: v for k, v in calibration.items() if not (self._stack and k.startswith("R_"))}
        chunks = getattr(data, "chunks", None)
        if chunks is not None and not self._stack and isinstance(chunks[0], tuple):
            ch = chunks[self._lead :]
            self.scan_chunks = (int(ch[0][0]), int(ch[1][0]))

    def _failure_hint(self, e: BaseException) -> str:
        if isinstance(e, FileNotFoundError):  # e.g. the .raw an EMPAD .xml names
            missing = f"the data file {Path(e.filename).name}" if e.filename else "a data file"
            return f"{missing} that {self.path.name} refers to is missing from {self.path.parent}: keep it next to {self.path.name}"
        return super()._failure_hint(e)

    def _sel(self, *idx):
        return (0,) * self._lead + idx

    @staticmethod
    def _get(x) -> np.ndarray:
        return np.asarray(x.compute() if hasattr(x, "compute") else x)

    def _read_4d(self, i0, i1, j0, j1):
        return self._get(self._data[self._sel(slice(i0, i1), slice(j0, j1))])

    def _read_row_cols(self, i, js):
        return self._get(self._data[self._sel(i)][np.asarray(js)])

    def _read_flat(self, a, b):
        return self._get(self._data[self._sel(slice(a, b))])


def open_rsciio(path: Path, dataset: str | None, scan) -> Source:
    """Open a detector file with the RosettaSciIO plugins that take its extension.

    Parameters
    ----------
    path : the file
    dataset : ignored (RosettaSciIO files hold one signal of interest; the first
        4-D one is taken, else the first 3-D stack)
    scan : ``(Rx, Ry)`` for a 3-D stack of frames, or None

    Returns
    -------
    DaskSource
    """
    try:
        from rsciio import IO_PLUGINS
    except ImportError:
        raise InputError(
            f"{path.name}: reading '{path.suffix}' files needs RosettaSciIO: pip install 'prenet-jax[io]' "
            "(or convert the file to HDF5 or .npy)"
        ) from None
    import importlib

    from ._hdf5 import register_filters

    register_filters()  # plugins that read HDF5 (EMD, NeXus, ARINA, ...) may meet compressed data

    ext = path.suffix.lower().lstrip(".")
    if ext == "raw":
        raise InputError(f"{path.name}: for EMPAD data give the .xml file that sits next to the .raw file")
    plugins = [p for p in IO_PLUGINS if ext in [e.lower() for e in p["file_extensions"]]]
    if not plugins:
        raise InputError(
            f"{path.name}: unknown file type '{path.suffix}'; supported: HDF5 (.h5, .hdf5, .emd, .py4dstem), .npy, and the RosettaSciIO formats (.mib, .blo, .dm3/.dm4, EMPAD .xml, .mrc, .ser, .tvips, ...)"
        )
    errors = []
    for p in plugins:
        try:
            mod = importlib.import_module(p["api"])
            try:
                items = mod.file_reader(str(path), lazy=True)
            except TypeError:
                items = mod.file_reader(str(path))
        except Exception as e:  # try the next plugin with this extension
            errors.append(f"{p['name']}: {e}")
            continue
        cands = [it for it in items if len(_squeeze_leading(tuple(it["data"].shape))) in (3, 4)]
        cands4 = [it for it in cands if len(_squeeze_leading(tuple(it["data"].shape))) == 4]
        pick = cands4 or cands
        if not pick:
            shapes = ", ".join(str(tuple(it["data"].shape)) for it in items)
            raise InputError(f"{path.name} ({p['name']}) holds no 4-D data: {shapes}")
        it = pick[0]
        src = DaskSource(path, it["data"], f"rsciio:{p['name']}", scan, _rsciio_calibration(it))
        src.saturation, src.saturation_from = rsciio_saturation(it)
        if p["name"] == "EMPAD":  # the .xml names a .raw file: fail now, not in pass 0, if it is missing
            try:
                src.read_frames(np.array([0]))
            except BaseException:
                src.close()
                raise
        return src
    raise InputError(f"{path.name} could not be read as {' or '.join(p['name'] for p in plugins)}: {'; '.join(errors)}")


def _rsciio_calibration(item: dict) -> dict:
    """Pixel sizes from RosettaSciIO axes (numpy order: navigation first)."""
    axes = item.get("axes") or []
    out: dict[str, Any] = {}
    nav = [a for a in axes if a.get("navigate")]
    sig = [a for a in axes if not a.get("navigate")]
    if sig and all(isinstance(a.get("scale"), (int, float)) for a in sig[-1:]):
        out["Q_pixel_size"] = float(sig[-1]["scale"])
        out["Q_pixel_units"] = str(sig[-1].get("units") or "pixels")
    if nav and isinstance(nav[-1].get("scale"), (int, float)):
        out["R_pixel_size"] = float(nav[-1]["scale"])
        out["R_pixel_units"] = str(nav[-1].get("units") or "pixels")
    return out


def rsciio_saturation(item: dict) -> tuple[float | None, str | None]:
    """The detector's count limit from a RosettaSciIO item's metadata, and where it
    comes from.

    Merlin (QuantumDetector): ``original_metadata['hdr_file']['Counter Depth (number)']``
    (else ``mib_properties['dynamic_range']``) of ``d`` bits -> ``2**d - 1``
    (1 -> 1, 6 -> 63, 12 -> 4095, 24 -> 16777215).

    Parameters
    ----------
    item : one of the dicts a RosettaSciIO ``file_reader`` returns

    Returns
    -------
    (level, description), or (None, None) when the metadata give none
    """
    om = item.get("original_metadata") or {}
    hdr = om.get("hdr_file") if isinstance(om, dict) else None
    depth = None
    if isinstance(hdr, dict):
        depth = _int(hdr.get("Counter Depth (number)"))
    if depth is None and isinstance(om, dict) and isinstance(om.get("mib_properties"), dict):
        depth = _int(om["mib_properties"].get("dynamic_range"))
    if depth is not None and 0 < depth <= 32:
        return float(2**depth - 1), f"the Merlin counter depth {depth}"
    return None, None


def _int(v) -> int | None:
    """An integer from a header value (``'6'``, ``6``, ``'12-bit'``), else None
    (also for an ambiguous ``'1 or 6-bit'``)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+)(?:\s*-?\s*bits?)?\s*", v)
        return int(m.group(1)) if m else None
    return None
