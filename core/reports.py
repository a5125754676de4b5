"""JSON reports (benchmarks, runs, training): written in one way everywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: str | Path, report: Any) -> Path:
    """Write ``report`` as indented JSON, creating folders; atomic (temp file, then rename) so a
    reader never sees half a report. Numpy scalars and other numbers are written as floats."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    return path
