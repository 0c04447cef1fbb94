"""Read and write frames the way a Dectris Eiger does: one NeXus (NXmx) master file plus data files.

Layout (what ``<name>_master.h5`` holds)::

    /entry                                   NXentry, definition = "NXmx"
      data/data_000001 -> <name>_data_000001.h5:/entry/data/data   (external links, NXdata)
      instrument/beam/incident_wavelength    Å
      instrument/detector/                   NXdetector
        detector_distance, x_pixel_size, y_pixel_size        m
        beam_center_x, beam_center_y                         pixels from the detector corner
        count_time, frame_time, description, sensor_material, sensor_thickness, bit_depth_image
        detectorSpecific/ nimages, ntrigger, x/y_pixels_in_detector, pixel_mask,
                          countrate_correction_count_cutoff, polarization (this simulator's)
      sample/name, start_time

Each data file holds ``/entry/data/data`` (frames, rows, columns), uint16 by default, one frame
per HDF5 chunk, bitshuffle-LZ4 compressed (the Eiger's own filter, via hdf5plugin), with
``image_nr_low`` / ``image_nr_high`` (1-based) attributes. Masked pixels (module gaps, dead and
hot pixels) carry the dtype's maximum value in the frames, as on the detector; the pixel mask
says which they are (bit 0 gap, 1 dead, 3 hot, as Dectris).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from .geometry import Geometry

MASK_GAP, MASK_DEAD, MASK_HOT = 1, 2, 8


def data_file_name(name: str, number: int) -> str:
    """File name of data file ``number`` (1-based) of run ``name``."""
    return f"{name}_data_{number:06d}.h5"


def _compression(compression: str | None) -> dict:
    if compression in (None, "none"):
        return {}
    if compression == "bslz4":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 1}
    raise ValueError(f"unknown compression {compression!r} (bslz4, gzip or none)")


def write_data_file(path: str | os.PathLike, frames: Iterable[np.ndarray], n_frames: int,
                    first_image: int, compression: str | None = "bslz4") -> None:
    """Write one Eiger-style data file of ``n_frames`` frames (``first_image`` is 1-based).

    ``frames`` may be a generator: frames are written one by one, never all held in memory.
    """
    tmp = Path(f"{path}.part")
    frames = iter(frames)
    first = next(frames)
    with h5py.File(tmp, "w") as f:
        data = f.create_group("entry").create_group("data")
        data.attrs["NX_class"] = "NXdata"
        dset = data.create_dataset("data", shape=(n_frames, *first.shape), dtype=first.dtype,
                                   chunks=(1, *first.shape), **_compression(compression))
        dset[0] = first
        written = 1
        for frame in frames:
            dset[written] = frame
            written += 1
        if written != n_frames:
            raise ValueError(f"got {written} frames for a file of {n_frames}")
        dset.attrs["image_nr_low"] = np.int32(first_image)
        dset.attrs["image_nr_high"] = np.int32(first_image + n_frames - 1)
    os.replace(tmp, path)  # readers never see a half-written file


def write_master(path: str | os.PathLike, geometry: Geometry, data_files: list[tuple[str, int]],
                 pixel_mask: np.ndarray, *, dtype: str = "uint16", count_time: float = 0.01,
                 sample: str = "lysozyme microcrystals", start_time: str = "") -> None:
    """Write the NXmx master file linking ``data_files`` (``[(file name, n frames), ...]``)."""
    path = Path(path)
    n_images = sum(n for _, n in data_files)
    ny, nx = geometry.shape
    with h5py.File(path, "w") as f:
        entry = f.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        entry["definition"] = "NXmx"
        entry["start_time"] = start_time
        data = entry.create_group("data")
        data.attrs["NX_class"] = "NXdata"
        for number, (name, _) in enumerate(data_files, start=1):
            data[f"data_{number:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        beam = instrument.create_group("beam")
        beam.attrs["NX_class"] = "NXbeam"
        _put(beam, "incident_wavelength", geometry.wavelength, "angstrom")
        det = instrument.create_group("detector")
        det.attrs["NX_class"] = "NXdetector"
        det["description"] = f"Dectris EIGER2 X {nx}x{ny} (simulated)"
        det["sensor_material"] = "Si"
        _put(det, "sensor_thickness", 450e-6, "m")
        _put(det, "detector_distance", geometry.distance, "m")
        _put(det, "x_pixel_size", geometry.pixel_size, "m")
        _put(det, "y_pixel_size", geometry.pixel_size, "m")
        _put(det, "beam_center_x", geometry.beam_center_x, "pixel")
        _put(det, "beam_center_y", geometry.beam_center_y, "pixel")
        _put(det, "count_time", count_time, "s")
        _put(det, "frame_time", count_time, "s")
        det["bit_depth_image"] = np.int32(np.iinfo(dtype).bits)
        spec = det.create_group("detectorSpecific")
        spec["nimages"] = np.int64(n_images)
        spec["ntrigger"] = np.int64(1)
        spec["x_pixels_in_detector"] = np.int32(nx)
        spec["y_pixels_in_detector"] = np.int32(ny)
        spec.create_dataset("pixel_mask", data=pixel_mask.astype(np.uint32),
                            **_compression("gzip"))
        spec["countrate_correction_count_cutoff"] = np.int32(np.iinfo(dtype).max - 1)
        spec["polarization"] = geometry.polarization
        sample_group = entry.create_group("sample")
        sample_group.attrs["NX_class"] = "NXsample"
        sample_group["name"] = sample


def _put(group: h5py.Group, name: str, value: float, units: str) -> None:
    group[name] = value
    group[name].attrs["units"] = units


@dataclass
class Run:
    """What a master file says about a run (without the frames)."""

    master: str
    geometry: Geometry
    pixel_mask: np.ndarray
    n_frames: int
    data_files: list[tuple[str, int]]  # (absolute path, frames) in image order
    cutoff: int
    metadata: dict


def open_run(master: str | os.PathLike) -> Run:
    """Read geometry, pixel mask and the data-file list from an Eiger/NXmx master file."""
    master = Path(master).resolve()
    with h5py.File(master, "r") as f:
        det = f["/entry/instrument/detector"]
        spec = det["detectorSpecific"]
        ny, nx = int(spec["y_pixels_in_detector"][()]), int(spec["x_pixels_in_detector"][()])
        if "/entry/instrument/beam/incident_wavelength" in f:
            wavelength = float(f["/entry/instrument/beam/incident_wavelength"][()])
        else:  # older Eiger firmware
            wavelength = float(f["/entry/instrument/monochromator/wavelength"][()])
        geometry = Geometry(
            shape=(ny, nx), pixel_size=float(det["x_pixel_size"][()]),
            distance=float(det["detector_distance"][()]), wavelength=wavelength,
            beam_center_x=float(det["beam_center_x"][()]),
            beam_center_y=float(det["beam_center_y"][()]),
            polarization=float(spec["polarization"][()]) if "polarization" in spec else 0.99)
        data_files = []
        data = f["/entry/data"]
        for key in sorted(k for k in data if k.startswith("data_")):
            link = data.get(key, getlink=True)
            target = master.parent / link.filename
            with h5py.File(target, "r") as df:
                data_files.append((str(target), int(df["/entry/data/data"].shape[0])))
        metadata = {
            "detector": _text(det["description"][()]),
            "sensor_material": _text(det["sensor_material"][()]),
            "count_time_s": float(det["count_time"][()]),
            "sample": _text(f["/entry/sample/name"][()]) if "/entry/sample/name" in f else "",
            "start_time": _text(f["/entry/start_time"][()]) if "/entry/start_time" in f else "",
            "bit_depth_image": int(det["bit_depth_image"][()]),
        }
        return Run(master=str(master), geometry=geometry,
                   pixel_mask=spec["pixel_mask"][()], n_frames=sum(n for _, n in data_files),
                   data_files=data_files, cutoff=int(spec["countrate_correction_count_cutoff"][()]),
                   metadata=metadata)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def iter_frames(run: Run, start: int = 0, stop: int | None = None,
                block: int = 16) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(frame index, frame)`` for frames ``start <= i < stop`` (0-based, whole run)."""
    stop = run.n_frames if stop is None else min(stop, run.n_frames)
    if not 0 <= start <= stop:
        raise ValueError(f"bad frame range {start}:{stop} for a run of {run.n_frames} frames")
    offset = 0
    for path, n in run.data_files:
        lo, hi = max(start - offset, 0), min(stop - offset, n)
        if lo < hi:
            with h5py.File(path, "r") as f:
                dset = f["/entry/data/data"]
                for b in range(lo, hi, block):  # read a few chunks at a time: less overhead
                    frames = dset[b:min(b + block, hi)]
                    for k, frame in enumerate(frames):
                        yield offset + b + k, frame
        offset += n
