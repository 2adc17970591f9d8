"""The embedded warehouse: one DuckDB file, read through Ibis, written by one writer."""

from .engine import Store
from .writer import Writer

__all__ = ["Store", "Writer"]
