"""Helpers shared by the tests and the benchmark scripts, each written once.

The modules bench/ imports (``dm_reference``, ``processes``, ``real_data``) must work without
pytest: the benchmarks run without the dev extras.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
