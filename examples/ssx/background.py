"""Radial background model: a sigma-clipped azimuthal average per ring, from pyFAI.

pyFAI's ``sigma_clip_ng`` (CSR sparse matrix, Cython) integrates a frame into rings with
solid-angle and polarisation correction, iteratively dropping pixels more than ``clip`` σ from the
ring mean — that removes Bragg spots and hot pixels, leaving the diffuse and solvent-ring
background and its spread (the ring's standard deviation, which includes the Poisson noise).
Measured on one core, a 1024×1024 frame takes ~23 ms, about what the same clipping written with
``numpy.bincount`` takes (~20 ms), so the well-kept, geometry-aware library is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from .geometry import Geometry

_CACHE: dict[tuple, RadialBackground] = {}
_LOCK = threading.Lock()  # worker threads (e.g. Dask's) share the cache


@dataclass
class Profile:
    """Background of one frame: per-ring mean and standard deviation, in corrected units."""

    mean: np.ndarray
    std: np.ndarray


class RadialBackground:
    """Background estimator for one geometry and pixel mask (build with :func:`radial_background`).

    ``valid`` marks the pixels analysed: unmasked and within the resolution range
    ``d_max >= d >= d_min`` (Å), which also keeps the beamstop shadow out.
    """

    def __init__(self, geometry: Geometry, bad_pixels: np.ndarray, *, d_min: float | None = None,
                 d_max: float | None = 40.0, bin_px: float = 1.0, clip: float = 3.0) -> None:
        logging.getLogger("pyFAI").setLevel(logging.ERROR)  # it warns about OpenCL being absent
        self.geometry = geometry
        self.clip = clip
        q = geometry.q()
        d = 2 * np.pi / np.maximum(q, 1e-12)
        in_range = np.ones(q.shape, bool)
        if d_max is not None:
            in_range &= d <= d_max
        if d_min is not None:
            in_range &= d >= d_min
        self.valid = in_range & ~bad_pixels.astype(bool)
        self._ai = geometry.pyfai_integrator()
        self.correction = (self._ai.solidAngleArray(geometry.shape)
                           * self._ai.polarization(geometry.shape, factor=geometry.polarization)
                           ).astype(np.float32)
        radius_mm = geometry.radius_m() * 1e3
        self.r_max_mm = float(radius_mm.max()) * (1 + 1e-6)
        self.npt = max(int(self.r_max_mm / (geometry.pixel_size * 1e3 * bin_px)), 16)
        # Same uniform bins pyFAI uses for radial_range=(0, r_max): lets a profile be mapped back
        # onto the pixels with one indexing operation.
        self.ring = np.minimum((radius_mm / self.r_max_mm * self.npt).astype(np.int32),
                               self.npt - 1)
        r_mm = (np.arange(self.npt) + 0.5) * self.r_max_mm / self.npt
        two_theta = np.arctan2(r_mm * 1e-3, geometry.distance)
        self.q = 4 * np.pi * np.sin(two_theta / 2) / geometry.wavelength  # ring centres, Å⁻¹

    def profile(self, frame: np.ndarray) -> Profile:
        """Sigma-clipped mean and standard deviation of each ring of ``frame``."""
        result = self._ai.sigma_clip_ng(
            frame.astype(np.float32, copy=False), self.npt, unit="r_mm",
            radial_range=(0.0, self.r_max_mm), method=("no", "csr", "cython"), mask=~self.valid,
            polarization_factor=self.geometry.polarization, error_model="azimuthal",
            thres=self.clip, max_iter=5)
        mean = np.nan_to_num(np.asarray(result.intensity, np.float32))
        std = np.nan_to_num(np.asarray(result.std, np.float32))
        return Profile(mean=mean, std=std)

    def image(self, values: np.ndarray) -> np.ndarray:
        """A per-ring array (e.g. ``profile.mean``) as an image in counts (corrections undone)."""
        return values[self.ring] * self.correction


def radial_background(geometry: Geometry, bad_pixels: np.ndarray, **options) -> RadialBackground:
    """A cached :class:`RadialBackground`: building one costs ~1 s (pyFAI set-up), reuse it."""
    # The pid is in the key because a forked child must not reuse its parent's OpenMP state.
    key = (geometry, hashlib.sha1(np.ascontiguousarray(bad_pixels)).hexdigest(),
           tuple(sorted(options.items())), os.getpid())
    with _LOCK:
        if key not in _CACHE:
            _CACHE.clear()  # one run at a time per process is the common case; bound memory
            _CACHE[key] = RadialBackground(geometry, bad_pixels, **options)
        return _CACHE[key]
