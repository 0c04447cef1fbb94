"""A serial-crystallography beamline simulator writing Eiger-style NeXus/HDF5 frames.

Each frame is the photon count of a 2-D hybrid-pixel detector behind a liquid jet:

* background: air/buffer diffuse scatter falling with q, a water (solvent) ring at q ≈ 2 Å⁻¹,
  a flat floor, all times solid angle and polarisation; a beamstop shadow at the centre;
  the beam flux and the jet thickness jitter from frame to frame;
* on a hit (a fraction of frames, chosen at random), Bragg spots from a randomly oriented
  lysozyme-like crystal: reciprocal-lattice points near the Ewald sphere, Wilson-distributed
  intensities with a B-factor fall-off, Gaussian spot profiles;
* Poisson noise, a few persistent unflagged hot pixels, module gaps and dead pixels set to the
  dtype's maximum (flagged in the pixel mask), counts clipped at the count-rate cut-off.

Every frame draws from its own generator seeded by ``(seed, frame index)``, so a run is
reproducible and does not depend on how frames are split into files or tasks. The ground truth
(hit or not, the number of strong spots and, optionally, their positions) goes to a JSON sidecar.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .geometry import Geometry
from .nexus import MASK_DEAD, MASK_GAP, MASK_HOT, data_file_name, write_data_file, write_master

STRONG_SNR = 5.0  # a true spot counts as "strong" when its expected I/σ(I) reaches this
HIT_MIN_SPOTS = 10  # a frame is a true hit when its crystal gives at least this many strong spots


@dataclass(frozen=True)
class Crystal:
    """Crystal and beam properties that shape the Bragg spots."""

    cell: tuple[float, float, float] = (79.1, 79.1, 37.9)  # Å, orthogonal (lysozyme-like)
    b_factor: float = 25.0  # Å², Wilson fall-off
    excitation_width: float = 6e-4  # Å⁻¹, mosaicity + bandwidth: how far off Ewald a spot shows
    spot_sigma: float = 0.8  # pixels
    median_photons: float = 200.0  # median crystal scale: photons of an average low-res spot
    scale_spread: float = 0.8  # log-normal spread of crystal sizes


@dataclass(frozen=True)
class Background:
    """Expected background counts per pixel (before corrections) and their jitter."""

    diffuse: float = 1.2  # at q = 0, falls as exp(-q / diffuse_q)
    diffuse_q: float = 0.8  # Å⁻¹
    ring: float = 2.0  # water ring peak
    ring_q: float = 2.0  # Å⁻¹
    ring_width: float = 0.3  # Å⁻¹ (σ)
    floor: float = 0.3
    flux_jitter: float = 0.1  # log-normal σ of the beam flux
    jet_jitter: float = 0.15  # relative σ of the solvent amount
    beamstop: float = 0.015  # beamstop shadow radius as a fraction of the distance
    hot_pixels: int = 3  # unflagged hot pixels that fire every frame


def detector_mask(geometry: Geometry) -> np.ndarray:
    """The detector's pixel mask (Dectris bits): a horizontal module gap, dead and hot pixels."""
    ny, nx = geometry.shape
    mask = np.zeros((ny, nx), np.uint32)
    mask[int(ny * 0.465):int(ny * 0.475) + 1, :] |= MASK_GAP
    rng = np.random.default_rng([ny, nx, 1])  # the detector does not change between runs
    n_bad = max(ny * nx // 20000, 2)
    mask.flat[rng.choice(ny * nx, n_bad, replace=False)] |= MASK_DEAD
    mask.flat[rng.choice(ny * nx, n_bad // 2, replace=False)] |= MASK_HOT
    return mask


@lru_cache(maxsize=4)
def _background_model(geometry: Geometry, background: Background) -> tuple[np.ndarray, ...]:
    """Diffuse and solvent-ring images (float32, corrections and beamstop shadow applied)."""
    q = geometry.q()
    corr = geometry.correction()
    shadow = np.where(geometry.radius_m() < background.beamstop * geometry.distance, 0.02, 1.0)
    diffuse = (background.diffuse * np.exp(-q / background.diffuse_q) + background.floor)
    ring = background.ring * np.exp(-0.5 * ((q - background.ring_q) / background.ring_width) ** 2)
    diffuse = (diffuse * corr * shadow).astype(np.float32)
    ring = (ring * corr * shadow).astype(np.float32)
    rng = np.random.default_rng([*geometry.shape, 2])
    hot = rng.choice(q.size, background.hot_pixels, replace=False)
    return diffuse, ring, hot, shadow < 1


@lru_cache(maxsize=4)
def _lattice(cell: tuple[float, float, float], s_max: float) -> np.ndarray:
    """Reciprocal-lattice vectors (n, 3) in Å⁻¹ of all reflections with 1/d <= s_max."""
    a, b, c = cell
    axes = [np.arange(-int(s_max * x) - 1, int(s_max * x) + 2) for x in (a, b, c)]
    hkl = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float64)
    s = hkl / np.array(cell)
    keep = (np.einsum("ij,ij->i", s, s) <= s_max**2) & hkl.any(axis=1)
    return s[keep]


def bragg_spots(geometry: Geometry, crystal: Crystal, rng: np.random.Generator) -> np.ndarray:
    """Spots of one randomly oriented crystal: array (n, 3) of x, y (pixels) and photons."""
    ny, nx = geometry.shape
    s_max = geometry.q().max() / (2 * np.pi)
    s = _lattice(crystal.cell, float(s_max)) @ Rotation.random(random_state=rng).as_matrix().T
    k = 1.0 / geometry.wavelength
    s1 = s + np.array([0.0, 0.0, k])  # beam along +z
    excitation = np.linalg.norm(s1, axis=1) - k
    near = (np.abs(excitation) < 3 * crystal.excitation_width) & (s1[:, 2] > 0)
    s, s1, excitation = s[near], s1[near], excitation[near]
    x = geometry.distance * s1[:, 0] / s1[:, 2] / geometry.pixel_size + geometry.beam_center_x
    y = geometry.distance * s1[:, 1] / s1[:, 2] / geometry.pixel_size + geometry.beam_center_y
    inside = (x >= 0) & (x < nx) & (y >= 0) & (y < ny)
    x, y, s, excitation = x[inside], y[inside], s[inside], excitation[inside]
    partiality = np.exp(-0.5 * (excitation / crystal.excitation_width) ** 2)
    wilson = np.exp(-crystal.b_factor * np.einsum("ij,ij->i", s, s) / 2)
    scale = crystal.median_photons * np.exp(crystal.scale_spread * rng.standard_normal())
    photons = scale * partiality * wilson * rng.exponential(size=len(x))
    photons *= geometry.correction()[y.astype(int), x.astype(int)]
    keep = photons >= 1.0  # fainter spots are invisible under any background
    return np.column_stack([x[keep], y[keep], photons[keep]])


def render_spots(shape: tuple[int, int], spots: np.ndarray, sigma: float) -> np.ndarray:
    """Expected counts (float32 image) of Gaussian spots at sub-pixel positions."""
    image = np.zeros(shape[0] * shape[1], np.float32)
    if len(spots) == 0:
        return image.reshape(shape)
    r = int(np.ceil(3.5 * sigma))
    offsets = np.arange(-r, r + 1)
    x, y, photons = spots.T
    ix = np.floor(x).astype(int)[:, None, None] + offsets[None, None, :]
    iy = np.floor(y).astype(int)[:, None, None] + offsets[None, :, None]
    w = np.exp(-0.5 * (((ix + 0.5 - x[:, None, None]) / sigma) ** 2
                       + ((iy + 0.5 - y[:, None, None]) / sigma) ** 2))
    w *= (photons / w.sum(axis=(1, 2)))[:, None, None]
    ix, iy = np.broadcast_arrays(ix, iy)
    ok = (ix >= 0) & (ix < shape[1]) & (iy >= 0) & (iy < shape[0])
    np.add.at(image, (iy * shape[1] + ix)[ok], w[ok].astype(np.float32))
    return image.reshape(shape)


def simulate_frame(index: int, geometry: Geometry, *, seed: int, hit_fraction: float,
                   crystal: Crystal = Crystal(), background: Background = Background(),
                   dtype: str = "uint16", pixel_mask: np.ndarray | None = None,
                   hit_min_spots: int = HIT_MIN_SPOTS) -> tuple[np.ndarray, dict]:
    """Frame ``index`` of a run: ``(counts image, ground truth dict)``.

    In the truth, ``crystal`` says whether a crystal was in the beam and ``is_hit`` whether it
    gave at least ``hit_min_spots`` strong spots — the usual SSX meaning of a hit (a crystal too
    small or badly oriented to diffract visibly is a miss for any hit finder).
    """
    rng = np.random.default_rng([seed, index])
    diffuse, ring, hot, shadowed = _background_model(geometry, background)
    flux = float(np.exp(background.flux_jitter * rng.standard_normal()))
    jet = max(0.0, 1.0 + background.jet_jitter * rng.standard_normal())
    expected = flux * (diffuse + np.float32(jet) * ring)
    crystal_in_beam = bool(rng.random() < hit_fraction)
    mask = detector_mask(geometry) if pixel_mask is None else pixel_mask
    truth = {"index": index, "is_hit": False, "crystal": crystal_in_beam, "flux": round(flux, 4),
             "n_spots": 0, "n_reflections": 0, "spots": []}
    if crystal_in_beam:
        spots = bragg_spots(geometry, crystal, rng)
        spots[:, 2] *= flux
        expected += render_spots(geometry.shape, spots, crystal.spot_sigma)
        iy, ix = spots[:, 1].astype(int), spots[:, 0].astype(int)
        # "Strong": detectable in principle, i.e. on a live, unshadowed pixel with a good I/σ.
        local = flux * (diffuse[iy, ix] + jet * ring[iy, ix])
        snr = spots[:, 2] / np.sqrt(spots[:, 2] + 9 * local)
        strong = (snr >= STRONG_SNR) & (mask[iy, ix] == 0) & ~shadowed[iy, ix]
        truth["n_reflections"] = len(spots)
        truth["n_spots"] = int(strong.sum())
        truth["is_hit"] = truth["n_spots"] >= hit_min_spots
        truth["spots"] = np.round(spots[strong], 2).tolist()
    counts = rng.poisson(expected)
    counts.flat[hot] += rng.poisson(40, len(hot))
    limit = np.iinfo(dtype).max
    frame = np.minimum(counts, limit - 1).astype(dtype)  # count-rate cut-off: saturation
    frame[mask != 0] = limit  # gaps and bad pixels read as the maximum value, as on an Eiger
    return frame, truth


def simulate_data_file(path: str, first_index: int, n_frames: int, geometry: dict, *, seed: int,
                       hit_fraction: float, crystal: dict | None = None,
                       background: dict | None = None, dtype: str = "uint16",
                       compression: str | None = "bslz4", record_spots: bool = True,
                       hit_min_spots: int = HIT_MIN_SPOTS) -> list[dict]:
    """Simulate frames ``first_index .. first_index + n_frames - 1`` into one data file.

    A plain module-level function of simple values, so files can be made in parallel (on an
    executor, locally or remotely). Returns the ground truth of its frames.
    """
    geo = Geometry.from_dict(geometry)
    cry = Crystal(**{**(crystal or {}), "cell": tuple((crystal or {}).get("cell", Crystal.cell))})
    bkg = Background(**(background or {}))
    mask = detector_mask(geo)
    truths = []

    def frames():
        for index in range(first_index, first_index + n_frames):
            frame, truth = simulate_frame(index, geo, seed=seed, hit_fraction=hit_fraction,
                                          crystal=cry, background=bkg, dtype=dtype,
                                          pixel_mask=mask, hit_min_spots=hit_min_spots)
            if not record_spots:
                truth.pop("spots")
            truths.append(truth)
            yield frame

    write_data_file(path, frames(), n_frames, first_image=first_index + 1,
                    compression=compression)
    return truths


def simulate_run(out_dir: str | os.PathLike, *, n_frames: int = 100,
                 shape: int | tuple[int, int] = 1024, hit_fraction: float = 0.3,
                 frames_per_file: int = 100, seed: int = 0, name: str = "ssx",
                 geometry: Geometry | None = None, crystal: Crystal = Crystal(),
                 background: Background = Background(), dtype: str = "uint16",
                 compression: str | None = "bslz4", record_spots: bool = True,
                 hit_min_spots: int = HIT_MIN_SPOTS, executor: Executor | None = None) -> dict:
    """Write a run: ``<name>_master.h5``, data files and ``<name>_truth.json`` in ``out_dir``.

    Returns ``{"master", "truth", "data_files", "n_frames", "seconds"}`` (paths as strings).
    With an ``executor`` the data files are simulated in parallel on it.
    """
    if n_frames < 1 or frames_per_file < 1:
        raise ValueError("n_frames and frames_per_file must be >= 1")
    if not 0.0 <= hit_fraction <= 1.0:
        raise ValueError(f"hit_fraction must be within [0, 1], not {hit_fraction}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geo = geometry or Geometry.default(shape)
    starts = list(range(0, n_frames, frames_per_file))
    files = [(data_file_name(name, i + 1), min(frames_per_file, n_frames - s))
             for i, s in enumerate(starts)]
    kwargs = dict(seed=seed, hit_fraction=hit_fraction, crystal=asdict(crystal),
                  background=asdict(background), dtype=dtype, compression=compression,
                  record_spots=record_spots, hit_min_spots=hit_min_spots)
    args = [(str(out / fname), s, n, geo.to_dict()) for (fname, n), s in zip(files, starts, strict=True)]
    if executor is None:
        parts = [simulate_data_file(*a, **kwargs) for a in args]
    else:
        parts = [f.result() for f in [executor.submit(simulate_data_file, *a, **kwargs)
                                      for a in args]]
    started = datetime.now(UTC).isoformat(timespec="seconds")
    master = out / f"{name}_master.h5"
    write_master(master, geo, files, detector_mask(geo), dtype=dtype, start_time=started)
    frames = [t for part in parts for t in part]
    truth = {
        "version": 1, "name": name, "seed": seed, "n_frames": n_frames,
        "hit_fraction": hit_fraction, "n_hits": sum(t["is_hit"] for t in frames),
        "n_crystals": sum(t["crystal"] for t in frames), "hit_min_spots": hit_min_spots,
        "strong_spot_snr": STRONG_SNR, "geometry": geo.to_dict(), "crystal": asdict(crystal),
        "background": asdict(background), "frames": frames,
    }
    truth_path = out / f"{name}_truth.json"
    truth_path.write_text(json.dumps(truth))
    return {"master": str(master), "truth": str(truth_path),
            "data_files": [str(out / f) for f, _ in files], "n_frames": n_frames,
            "seconds": time.perf_counter() - t0}
