"""Detector geometry: a flat detector perpendicular to the beam, as in most SSX set-ups.

Conventions (the same as pyFAI's and the NeXus/Eiger master file's): pixel (row ``i``, column
``j``) has its centre at ``(i + 0.5, j + 0.5)`` pixels from the detector corner; the beam centre
``(beam_center_x, beam_center_y)`` is in pixels from that corner, x along columns (fast axis).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Where the detector is and what hits it. Lengths in metres, wavelength in ångström."""

    shape: tuple[int, int] = (1024, 1024)  # (rows, columns) = (y, x)
    pixel_size: float = 75e-6
    distance: float = 0.10
    wavelength: float = 1.0
    beam_center_x: float = 514.3
    beam_center_y: float = 521.7
    polarization: float = 0.99  # horizontal polarisation fraction of a synchrotron beam

    @classmethod
    def default(cls, shape: tuple[int, int] | int = (1024, 1024)) -> Geometry:
        """A geometry covering the same angles (to ~2 Å in the corners) for any detector size."""
        ny, nx = (shape, shape) if isinstance(shape, int) else shape
        scale = max(ny, nx) / 1024
        return cls(shape=(int(ny), int(nx)), distance=0.10 * scale,
                   beam_center_x=nx / 2 + 2.3 * scale, beam_center_y=ny / 2 + 9.7 * scale)

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        fields["shape"] = tuple(int(v) for v in fields.get("shape", cls.shape))
        return cls(**fields)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    # -- per-pixel arrays (cached: they depend only on the geometry) --------------------------

    def radius_m(self) -> np.ndarray:
        """Distance of each pixel centre from the beam centre on the detector, in metres."""
        return _arrays(self)[0]

    def two_theta(self) -> np.ndarray:
        """Scattering angle 2θ of each pixel, in radians."""
        return _arrays(self)[2]

    def q(self) -> np.ndarray:
        """Momentum transfer q = 4π sin θ / λ of each pixel, in Å⁻¹."""
        return _arrays(self)[3]

    def azimuth(self) -> np.ndarray:
        """Azimuthal angle χ of each pixel (0 along +x), in radians."""
        return _arrays(self)[1]

    def correction(self) -> np.ndarray:
        """Relative solid angle × polarisation factor of each pixel (1 at the beam centre)."""
        return _arrays(self)[4]

    def resolution(self, q: np.ndarray | float) -> np.ndarray | float:
        """d-spacing (Å) for a momentum transfer q (Å⁻¹)."""
        return 2 * np.pi / np.asarray(q)

    def pyfai_integrator(self):
        """A pyFAI ``AzimuthalIntegrator`` for this geometry (same pixel conventions)."""
        from pyFAI.detectors import Detector
        from pyFAI.integrator.azimuthal import AzimuthalIntegrator

        detector = Detector(pixel1=self.pixel_size, pixel2=self.pixel_size, max_shape=self.shape)
        return AzimuthalIntegrator(
            dist=self.distance, poni1=self.beam_center_y * self.pixel_size,
            poni2=self.beam_center_x * self.pixel_size, detector=detector,
            wavelength=self.wavelength * 1e-10)


@lru_cache(maxsize=8)
def _arrays(geometry: Geometry) -> tuple[np.ndarray, ...]:
    """radius (m), azimuth, 2θ, q and correction arrays, computed once per geometry."""
    ny, nx = geometry.shape
    y = (np.arange(ny, dtype=np.float64) + 0.5 - geometry.beam_center_y) * geometry.pixel_size
    x = (np.arange(nx, dtype=np.float64) + 0.5 - geometry.beam_center_x) * geometry.pixel_size
    radius = np.hypot(y[:, None], x[None, :])
    azimuth = np.arctan2(y[:, None], x[None, :])
    tth = np.arctan2(radius, geometry.distance)
    q = 4 * np.pi * np.sin(tth / 2) / geometry.wavelength
    # Solid angle (cos³ 2θ, flat detector) × polarisation factor, with pyFAI's formula.
    pol = 0.5 * (1 + np.cos(tth) ** 2 - geometry.polarization * np.cos(2 * azimuth)
                 * np.sin(tth) ** 2)
    correction = (np.cos(tth) ** 3 * pol).astype(np.float32)
    arrays = (radius, azimuth, tth, q, correction)
    for a in arrays:
        a.flags.writeable = False  # shared through the cache
    return arrays
