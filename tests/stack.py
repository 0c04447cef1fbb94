"""Kept for test modules that import it: the stack launcher lives in fedcompute.testing."""

from fedcompute.testing import LocalStack as Stack

__all__ = ["Stack"]
