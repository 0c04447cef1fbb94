"""Spot finding and hit classification for one frame (a peakfinder8-style algorithm).

1. Background: the sigma-clipped radial profile (mean and spread per ring, see ``background``).
2. Threshold: a pixel is *strong* if it exceeds ring mean + max(``n_sigma`` × ring σ,
   ``min_excess``) (solid angle and polarisation taken into account).
3. Connected components of strong pixels (8-connectivity, ``scipy.ndimage.label``) with
   ``min_pixels`` ≤ size ≤ ``max_pixels`` are candidate spots, unless one pixel holds more
   than ``max_peak_fraction`` of the excess counts: optics blur a Bragg spot over several
   pixels, a hot pixel (with noisy neighbours) is one bright pixel.
4. Local background: the mean of the unmasked, non-strong pixels in a box around each candidate
   (its core excluded); a spot is kept if its background-subtracted intensity has I/σ(I) ≥
   ``min_snr``.
5. A frame is a *hit* if it has at least ``min_spots`` spots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy import ndimage

from .background import Profile, RadialBackground

SPOT_COLUMNS = ("x", "y", "intensity", "snr", "npix", "q")
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class SpotFinderParams:
    """Spot-finding and hit-finding settings (pass as a dict to the pipeline steps)."""

    n_sigma: float = 3.0  # per pixel; the integrated I/σ(I) test (min_snr) is the strict one
    min_excess: float = 2.0  # counts above the background a strong pixel needs in any case
    min_pixels: int = 3  # 1-2 pixel blobs are noise or an unflagged hot pixel, not Bragg spots
    max_pixels: int = 200  # bigger blobs are ice, streaks or detector artefacts
    max_peak_fraction: float = 0.8  # of a spot's excess counts in its brightest pixel
    min_snr: float = 5.0
    local_box: int = 6  # half-size of the local-background box, pixels
    d_min: float | None = None  # Å: ignore pixels beyond this resolution
    d_max: float | None = 40.0  # Å: ignore low angles (beamstop shadow and its edge)
    clip: float = 3.0  # σ-clipping of the radial background
    min_spots: int = 10  # hit criterion

    @classmethod
    def from_dict(cls, d: dict | None) -> SpotFinderParams:
        """Build from a (partial) dict; unknown keys are an error, not silently ignored."""
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown spot-finder parameters: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return asdict(self)

    def background_options(self) -> dict:
        """The options of :func:`background.radial_background` these parameters imply."""
        return {"d_min": self.d_min, "d_max": self.d_max, "clip": self.clip}


def find_spots(frame: np.ndarray, bg: RadialBackground,
               params: SpotFinderParams) -> tuple[np.ndarray, Profile]:
    """Spots of ``frame`` as an array (n, 6) with :data:`SPOT_COLUMNS`, and its background."""
    f = frame.astype(np.float32)
    profile = bg.profile(f)
    threshold = bg.image(profile.mean + np.maximum(params.n_sigma * profile.std,
                                                   params.min_excess))
    strong = (f > threshold) & bg.valid
    labels, n = ndimage.label(strong, structure=_EIGHT)
    if n == 0:
        return np.empty((0, len(SPOT_COLUMNS))), profile
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    values = f[ys, xs]
    # Weights for the centroid: counts above the radial background at those pixels.
    w = np.maximum(values - profile.mean[bg.ring[ys, xs]] * bg.correction[ys, xs], 1e-3)
    npix = np.bincount(lab, minlength=n + 1)[1:]
    total = np.bincount(lab, values, minlength=n + 1)[1:]
    wsum = np.bincount(lab, w, minlength=n + 1)[1:]
    peak = np.zeros(n + 1)
    np.maximum.at(peak, lab, w)
    cx = np.bincount(lab, w * (xs + 0.5), minlength=n + 1)[1:] / wsum
    cy = np.bincount(lab, w * (ys + 0.5), minlength=n + 1)[1:] / wsum
    ok = ((npix >= params.min_pixels) & (npix <= params.max_pixels)
          & (peak[1:] <= params.max_peak_fraction * wsum))
    npix, total, cx, cy = npix[ok], total[ok], cx[ok], cy[ok]
    local, n_bg = _local_background(f, strong, bg.valid, cx, cy, npix, params.local_box)
    intensity = total - npix * local
    sigma = np.sqrt(total + npix**2 * local / np.maximum(n_bg, 1))
    snr = intensity / np.maximum(sigma, 1e-6)
    keep = (snr >= params.min_snr) & (n_bg >= 10)
    q = bg.geometry.q()[cy[keep].astype(int), cx[keep].astype(int)]
    spots = np.column_stack([cx[keep], cy[keep], intensity[keep], snr[keep], npix[keep], q])
    return spots, profile


def _local_background(f: np.ndarray, strong: np.ndarray, valid: np.ndarray, cx: np.ndarray,
                      cy: np.ndarray, npix: np.ndarray, half: int) -> tuple[np.ndarray, ...]:
    """Mean counts and pixel count of the background box around each candidate spot."""
    if len(cx) == 0:
        return np.zeros(0), np.zeros(0)
    offsets = np.arange(-half, half + 1)
    iy = cy.astype(int)[:, None, None] + offsets[None, :, None]
    ix = cx.astype(int)[:, None, None] + offsets[None, None, :]
    iy, ix = np.broadcast_arrays(iy, ix)
    inside = (iy >= 0) & (iy < f.shape[0]) & (ix >= 0) & (ix < f.shape[1])
    iy, ix = np.clip(iy, 0, f.shape[0] - 1), np.clip(ix, 0, f.shape[1] - 1)
    # Leave out the spot's core (its faint tail is below threshold but still spot signal).
    core = 1 + np.ceil(np.sqrt(npix / np.pi)).astype(int)
    dist = np.maximum(np.abs(offsets)[None, :, None], np.abs(offsets)[None, None, :])
    use = inside & valid[iy, ix] & ~strong[iy, ix] & (dist > core[:, None, None])
    n_bg = use.sum(axis=(1, 2))
    local = np.where(use, f[iy, ix], 0).sum(axis=(1, 2)) / np.maximum(n_bg, 1)
    return local, n_bg


def frame_statistics(index: int, frame: np.ndarray, spots: np.ndarray, profile: Profile,
                     bg: RadialBackground, params: SpotFinderParams, cutoff: int) -> dict:
    """Per-frame numbers for QA and the hit decision (JSON-friendly)."""
    valid = bg.valid
    n_valid = int(valid.sum())
    total = float(np.sum(frame, where=valid, dtype=np.float64))
    rings = profile.mean[profile.mean > 0]
    n_spots = len(spots)
    q = spots[:, 5] if n_spots else np.zeros(0)
    return {
        "index": int(index),
        "n_spots": n_spots,
        "is_hit": bool(n_spots >= params.min_spots),
        "total_counts": total,
        "mean_counts": total / max(n_valid, 1),
        "max_counts": int(np.max(frame, where=valid, initial=0)),
        "n_saturated": int(np.count_nonzero((frame >= cutoff) & valid)),
        "background": float(np.median(rings)) if len(rings) else 0.0,
        "spot_intensity": float(spots[:, 2].sum()) if n_spots else 0.0,
        "mean_snr": float(spots[:, 3].mean()) if n_spots else 0.0,
        "d_min": float(2 * np.pi / q.max()) if n_spots else None,
    }


def analyse_frame(index: int, frame: np.ndarray, bg: RadialBackground,
                  params: SpotFinderParams, cutoff: int) -> tuple[dict, np.ndarray, Profile]:
    """Spots, background profile and statistics of one frame."""
    spots, profile = find_spots(frame, bg, params)
    return frame_statistics(index, frame, spots, profile, bg, params, cutoff), spots, profile
