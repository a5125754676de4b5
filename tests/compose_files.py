"""The project's docker-compose.yml, loaded once, and the helpers that read its services
(shared by ``test_compose.py`` and ``test_dockerfile.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from recsys.cli.main import build_parser
from recsys.settings import Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRED_RECSYS_SERVICES = {"stream", "serve", "sim"}


def load_compose() -> dict[str, Any]:
    if not COMPOSE_FILE.is_file():
        raise FileNotFoundError(f"{COMPOSE_FILE} is missing")
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ValueError(f"{COMPOSE_FILE}: expected a mapping with a `services` mapping")
    return doc


COMPOSE = load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def argv_of(value: Any) -> list[str]:
    """A compose command / entrypoint (string or list) as an argv list."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def recsys_argv(svc: dict[str, Any]) -> list[str] | None:
    """The argv after `recsys` when this service runs the recsys CLI, else None."""
    if svc.get("entrypoint"):
        return None
    argv = argv_of(svc.get("command"))
    return argv[1:] if argv and argv[0] == "recsys" else None


RECSYS_SERVICES = {n: a for n, s in SERVICES.items() if (a := recsys_argv(s)) is not None}


def environment_of(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str] = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def settings_of(name: str) -> Settings:
    """The settings a service's process sees: the image's ENV, then the service's environment."""
    env: dict[str, str] = {}
    if SERVICES[name].get("build"):
        _base, stage = final_stage(dockerfile_instructions(dockerfile_of(SERVICES[name])[1]))
        env.update({k: v for k, v in dockerfile_env(stage).items() if k.startswith("RECSYS_")})
    env.update({k: v for k, v in environment_of(SERVICES[name]).items() if k.startswith("RECSYS_")})
    try:
        return load_settings(env=env)
    except SettingsError as exc:
        raise AssertionError(f"service {name!r}: its RECSYS_* environment is not valid settings: {exc}"
                             ) from None


def parse_cli(argv: list[str]) -> Any:
    """Parse with the real `recsys` parser; argparse errors become a readable AssertionError."""
    parser, _mods = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(
            f"`recsys {' '.join(argv)}` does not parse (exit {exc.code}): {err.getvalue().strip()}"
        ) from None


# ------------------------------------------------------------------------------------------
# Dockerfile parsing (enough for our own file: continuations, ARG defaults, stages)


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def dockerfile_instructions(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    buf, start = "", 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # comment lines inside a continuation are dropped by Docker too
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        keyword, _, args = buf.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        buf = ""
    return out


def final_stage(instrs: list[Instruction]) -> tuple[str, list[Instruction]]:
    """(base image of the last stage, ARG defaults resolved; the last stage's instructions)."""
    args: dict[str, str] = {}
    froms = [i for i, ins in enumerate(instrs) if ins.keyword == "FROM"]
    assert froms, "the Dockerfile has no FROM"
    for ins in instrs[: froms[0]]:
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name.strip()] = default.strip().strip('"')
    base = instrs[froms[-1]].args.split()[0]
    base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), base)
    return base, instrs[froms[-1] + 1:]


def dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword != "ENV":
            continue
        tokens = shlex.split(ins.args, comments=False)
        if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
            env[tokens[0]] = " ".join(tokens[1:])
            continue
        for tok in tokens:
            key, _, value = tok.partition("=")
            env[key] = value
    return env


BUILT_SERVICES = {n: s for n, s in SERVICES.items() if s.get("build")}


def dockerfile_of(svc: dict[str, Any]) -> tuple[Path, Path]:
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")
