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

from core.settings import (
    CONFIG_ENV,
    ENV_PREFIX,
    Settings,
    SettingsError,
    load_settings,
    settings_to_env,
)
from models.registry import default_root
from recsys.cli.main import build_parser
from recsys.cli.up import ROLES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ValueError(f"{path}: expected a mapping with a `services` mapping")
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


def process_env(svc: dict[str, Any]) -> dict[str, str]:
    """The RECSYS_* environment a service's process sees: the image's ENV, then the service's."""
    env: dict[str, str] = {}
    if svc.get("build"):
        _base, stage = final_stage(dockerfile_instructions(dockerfile_of(svc)[1]))
        env.update({k: v for k, v in dockerfile_env(stage).items() if k.startswith(ENV_PREFIX)})
    env.update({k: v for k, v in environment_of(svc).items() if k.startswith(ENV_PREFIX)})
    return env


def settings_of(name: str, services: dict[str, dict[str, Any]] | None = None) -> Settings:
    """The settings a service's process sees: the image's ENV, then the service's environment."""
    env = process_env((SERVICES if services is None else services)[name])
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


# ------------------------------------------------------------------------------------------
# checks that take a compose document, so that they can be pointed at any file
# (``load_compose(path)``), e.g. an older docker-compose.yml


# `recsys up` also starts these when no Kafka / Redis address is set; compose has its own
EMBEDDED_INFRA = ("broker", "redis")


def started_by_default(svc: dict[str, Any]) -> bool:
    """`docker compose up` starts it: no profile, and not scaled to zero replicas."""
    return not svc.get("profiles") and (svc.get("deploy") or {}).get("replicas", 1) != 0


def _set_options(argv: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The subcommand of a `recsys` argv and the options it sets away from their defaults, as
    the real parser reads them."""
    ns = vars(parse_cli(list(argv)))
    bare = vars(parse_cli([ns["command"]]))
    return {"command": ns["command"], **{k: v for k, v in ns.items() if bare.get(k) != v}}


def services_by_role(services: dict[str, dict[str, Any]],
                     roles: dict[str, tuple[str, ...]] = ROLES) -> dict[str, list[str]]:
    """role of `recsys up` -> the compose services started by default that run it.

    A service runs a role when its parsed command has every option the role's argv sets (the
    subcommand included); of several, the most specific: `stream --flow labels` runs `labels`,
    not `stream` (whose argv sets only the subcommand).
    """
    wanted = {role: _set_options(argv) for role, argv in roles.items()}
    out: dict[str, list[str]] = {role: [] for role in roles}
    for name, svc in services.items():
        argv = recsys_argv(svc)
        if argv is None or not started_by_default(svc):
            continue
        ns = vars(parse_cli(argv))
        fits = [r for r, opts in wanted.items() if all(ns.get(k) == v for k, v in opts.items())]
        if fits:
            out[max(fits, key=lambda r: len(wanted[r]))].append(name)
    return out


def missing_roles(services: dict[str, dict[str, Any]],
                  roles: dict[str, tuple[str, ...]] = ROLES) -> list[str]:
    """One line per long-running process of `recsys up` that no compose service runs."""
    return [f"`recsys up` runs {role!r} (`recsys {' '.join(roles[role])}`), but no compose "
            f"service does" for role, names in services_by_role(services, roles).items() if not names]


_RECSYS_VAR = re.compile(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b")
_ENV_READ = re.compile(rf"""environ\[['"]({ENV_PREFIX}[A-Z0-9_]+)['"]\]""")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def recsys_variable_problems(doc: dict[str, Any]) -> list[str]:
    """Every RECSYS_* name anywhere in the file (environments, anchors, health checks) is a real
    setting, and one a health check reads from the environment is set for that service."""
    fields = set(settings_to_env(load_settings(env={}), base={})) | {CONFIG_ENV}  # one per field
    problems = [f"{var} is not a setting (core/settings.py has no field {var[len(ENV_PREFIX):].lower()!r})"
                for var in sorted({m for s in _strings(doc) for m in _RECSYS_VAR.findall(s)} - fields)]
    for name, svc in doc["services"].items():
        test = (svc.get("healthcheck") or {}).get("test")
        env = process_env(svc)
        for var in sorted({m for s in _strings(test) for m in _ENV_READ.findall(s)} - set(env)):
            problems.append(f"service {name!r}: its health check reads {var}, which it does not set")
    return problems


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str  # a named volume, a host path, or "" (anonymous)
    target: str
    read_only: bool
    named: bool  # source is a top-level named volume


def mounts_of(svc: dict[str, Any], volumes: dict[str, Any] | None) -> list[Mount]:
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            source, target = str(v.get("source", "")), str(v["target"])
            ro = bool(v.get("read_only"))
            named = v.get("type", "volume") == "volume" and source in (volumes or {})
        else:
            parts = str(v).split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            ro = len(parts) > 2 and "ro" in parts[2].split(",")
            named = source in (volumes or {})
        out.append(Mount(source, target, ro, named))
    return out


# `recsys up` roles that write the model registry, and those that read it (the scorer's ranker and
# two-tower hot reload; the embeddings dataflow's item tower): all must see one folder
REGISTRY_WRITERS = ("retrain",)
REGISTRY_READERS = ("serve", "embeddings")


def registry_problems(doc: dict[str, Any]) -> list[str]:
    """The model registry (``models.registry.default_root(state_dir)`` of each process) is one
    named volume: mounted read-write where retrain runs, and at every scorer and the
    embeddings dataflow."""
    services, volumes = doc["services"], doc.get("volumes") or {}
    by_role = services_by_role(services)
    problems, sources = [], {}
    for role in (*REGISTRY_WRITERS, *REGISTRY_READERS):
        if not by_role.get(role):
            use = "writes" if role in REGISTRY_WRITERS else "reads"
            problems.append(f"no service runs {role!r}, which {use} the model registry")
        for name in by_role.get(role, []):
            root = str(default_root(settings_of(name, services).state_dir))
            found = [m for m in mounts_of(services[name], volumes) if m.target.rstrip("/") == root]
            if not found or not found[0].named:
                problems.append(f"service {name!r} ({role}): its model registry {root} is not a named "
                                f"volume (mounts: {[m.target for m in mounts_of(services[name], volumes)]})")
                continue
            if role in REGISTRY_WRITERS and found[0].read_only:
                problems.append(f"service {name!r} ({role}) writes the registry, but mounts it read-only")
            sources[name] = found[0].source
    if len(set(sources.values())) > 1:
        problems.append(f"the registry writer and readers mount different volumes: {sources}")
    return problems
