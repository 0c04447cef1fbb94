"""Serial crystallography (SSX) example for fedcompute: a beamline simulator writing Eiger-style
NeXus/HDF5 frames, hit finding, QA, and publication into a searchable, access-controlled
catalogue. The pipeline steps live in :mod:`fedcompute_ssx.steps`."""

from .catalogue import Catalogue
from .detect import SpotFinderParams, analyse_frame, find_spots
from .evaluate import evaluate, format_summary
from .geometry import Geometry
from .pipeline import run_pipeline
from .simulate import simulate_run

__version__ = "0.1.0"

__all__ = ["Catalogue", "Geometry", "SpotFinderParams", "__version__", "analyse_frame",
           "evaluate", "find_spots", "format_summary", "run_pipeline", "simulate_run"]
