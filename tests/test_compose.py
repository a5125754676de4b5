"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine.

- the compose file is valid against the Compose Specification schema (and the validator is
  shown to reject broken files, so a pass means something);
- every `recsys ...` command names a real subcommand and parses with the real CLI parser;
- every RECSYS_* variable is a real setting, and the addresses point at compose services that
  the process waits for; the scorer listens on all interfaces and is published;
- the topic-creation service creates every topic the settings name, compacted where keyed;
- the Dockerfile exists, runs the recsys CLI, installs torch from the CPU index, and the
  build context (.dockerignore) keeps what `pip install .` needs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fnmatch
import io
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft7Validator, FormatChecker
from packaging.specifiers import SpecifierSet

from recsys.cli.main import build_parser, subcommands
from recsys.settings import Settings, SettingsError, load_settings
from tests.compose_schema import ComposeSchemaUnavailable, load_compose_schema

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
CPU_TORCH_INDEX = "download.pytorch.org/whl/cpu"
REQUIRED_RECSYS_SERVICES = {"stream", "serve", "sim"}
KEYED_COMPACTED_TOPICS = ("catalog", "users")  # DESIGN: keyed by item / user, compacted


def _load_compose() -> dict[str, Any]:
    if not COMPOSE_FILE.is_file():
        raise FileNotFoundError(f"{COMPOSE_FILE} is missing")
    doc = yaml.safe_load(COMPOSE_FILE.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise ValueError(f"{COMPOSE_FILE}: expected a mapping with a `services` mapping")
    return doc


COMPOSE = _load_compose()
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


# ------------------------------------------------------------------------------------------
# helpers


def _argv(value: Any) -> list[str]:
    """A compose command / entrypoint (string or list) as an argv list."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _recsys_argv(svc: dict[str, Any]) -> list[str] | None:
    """The argv after `recsys` when this service runs the recsys CLI, else None."""
    if svc.get("entrypoint"):
        return None
    argv = _argv(svc.get("command"))
    return argv[1:] if argv and argv[0] == "recsys" else None


RECSYS_SERVICES = {n: a for n, s in SERVICES.items() if (a := _recsys_argv(s)) is not None}


def _environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str] = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _parse_cli(argv: list[str]) -> Any:
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


def _depends_on(svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {d: {} for d in deps}
    return {k: dict(v or {}) for k, v in deps.items()}


def _transitive_deps(name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(_depends_on(SERVICES[name]))
    while todo:
        dep = todo.pop()
        if dep in seen or dep not in SERVICES:
            continue
        seen.add(dep)
        todo.extend(_depends_on(SERVICES[dep]))
    return seen


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


_GO_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")


def _validator(schema: dict[str, Any]) -> Draft7Validator:
    # Compose durations are Go durations ("10s", "1m30s"); the other custom formats of the
    # schema (ports, expose, subnet_ip_address) are left to Compose itself.
    checker = FormatChecker(formats=())
    checker.checks("duration")(lambda value: not isinstance(value, str) or bool(_GO_DURATION.match(value)))
    return Draft7Validator(schema, format_checker=checker)


def _schema_errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


_SCHEMA: dict[str, Any] = {}  # memo: {"schema": ...} or {"error": ...}, fetched once per session


def _compose_schema() -> dict[str, Any]:
    """The Compose spec schema; a test FAILS (never skips) when it cannot be fetched."""
    if not _SCHEMA:
        try:
            _SCHEMA["schema"] = load_compose_schema()
        except ComposeSchemaUnavailable as exc:
            _SCHEMA["error"] = str(exc)
    if "error" in _SCHEMA:
        pytest.fail(f"the Compose spec schema is needed to validate {COMPOSE_FILE.name} and could not "
                    f"be fetched: {_SCHEMA['error']}", pytrace=False)
    schema: dict[str, Any] = _SCHEMA["schema"]
    return schema


# ------------------------------------------------------------------------------------------
# Dockerfile parsing (enough for our own file: continuations, ARG defaults, stages)


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str
    line: int


def _dockerfile_instructions(path: Path) -> list[Instruction]:
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


def _final_stage(instrs: list[Instruction]) -> tuple[str, list[Instruction]]:
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


def _dockerfile_env(stage: list[Instruction]) -> dict[str, str]:
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


def _exec_form(ins: Instruction) -> list[str]:
    try:
        value = json.loads(ins.args)
    except ValueError:
        return shlex.split(ins.args)  # shell form: run by /bin/sh -c, first word still the program
    assert isinstance(value, list), f"line {ins.line}: {ins.keyword} is not a JSON list"
    return [str(v) for v in value]


def _dockerignored(name: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if fnmatch.fnmatch(name, pat) or fnmatch.fnmatch(name, pat.removeprefix("**/")):
            ignored = not negate
    return ignored


BUILT_SERVICES = {n: s for n, s in SERVICES.items() if s.get("build")}


def _dockerfile_of(svc: dict[str, Any]) -> tuple[Path, Path]:
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


# ------------------------------------------------------------------------------------------
# (a) the Compose spec


def test_compose_file_matches_compose_spec() -> None:
    errors = _schema_errors(_validator(_compose_schema()), COMPOSE)
    assert not errors, f"{COMPOSE_FILE.name} violates the Compose spec:\n  " + "\n  ".join(errors)


def _mutations() -> list[tuple[str, Any, str]]:
    def unknown_service_key(doc: dict[str, Any]) -> None:
        doc["services"]["serve"]["comand"] = ["recsys", "serve"]

    def unknown_top_level_key(doc: dict[str, Any]) -> None:
        doc["service"] = doc["services"]

    def bad_condition(doc: dict[str, Any]) -> None:
        doc["services"]["stream"]["depends_on"]["redis"]["condition"] = "service_ready"

    def bad_duration(doc: dict[str, Any]) -> None:
        doc["services"]["serve"]["healthcheck"]["interval"] = "10 seconds"

    def command_not_string_list(doc: dict[str, Any]) -> None:
        doc["services"]["sim"]["command"] = {"recsys": "sim"}

    return [
        ("unknown service key", unknown_service_key, "services/serve"),
        ("unknown top-level key", unknown_top_level_key, "<root>"),
        ("bad depends_on condition", bad_condition, "services/stream/depends_on"),
        ("bad healthcheck duration", bad_duration, "services/serve/healthcheck/interval"),
        ("command is a mapping", command_not_string_list, "services/sim/command"),
    ]


@pytest.mark.parametrize(("label", "mutate", "where"), _mutations(), ids=[m[0] for m in _mutations()])
def test_validator_rejects_broken_compose_files(label: str, mutate: Any, where: str) -> None:
    doc = copy.deepcopy(COMPOSE)
    mutate(doc)
    errors = _schema_errors(_validator(_compose_schema()), doc)
    assert errors, f"the validator accepted a compose file with an {label}: the schema check is toothless"
    assert any(e.startswith(where) for e in errors), f"{label}: expected an error at {where}, got {errors}"


# ------------------------------------------------------------------------------------------
# (b) commands


def test_our_processes_are_services() -> None:
    missing = REQUIRED_RECSYS_SERVICES - {_parse_cli(a).command for a in RECSYS_SERVICES.values()}
    assert not missing, f"no compose service runs `recsys {'|'.join(sorted(missing))}`"


def test_services_built_from_our_image_run_the_recsys_cli() -> None:
    bad = [n for n, s in BUILT_SERVICES.items() if s.get("command") is not None and n not in RECSYS_SERVICES]
    assert not bad, f"services built from deploy/Dockerfile that do not run `recsys ...`: {bad}"


@pytest.mark.parametrize("name", sorted(RECSYS_SERVICES))
def test_recsys_command_names_a_real_subcommand_and_parses(name: str) -> None:
    argv = RECSYS_SERVICES[name]
    known = subcommands()
    args = _parse_cli(argv)
    assert args.command in known, (
        f"service {name!r}: `recsys {' '.join(argv)}` names no subcommand; known: {sorted(known)}")
    address = getattr(args, "address", None)
    if isinstance(address, str) and address:
        host = address.rsplit(":", 1)[0]
        assert host in SERVICES, f"service {name!r}: --address {address} is not a compose service"
        assert host in _transitive_deps(name), f"service {name!r} calls {host} but does not depend on it"


# ------------------------------------------------------------------------------------------
# (c) settings from the environment


def _settings_of(name: str) -> Settings:
    """The settings a service's process sees: the image's ENV, then the service's environment."""
    env: dict[str, str] = {}
    if SERVICES[name].get("build"):
        _base, stage = _final_stage(_dockerfile_instructions(_dockerfile_of(SERVICES[name])[1]))
        env.update({k: v for k, v in _dockerfile_env(stage).items() if k.startswith("RECSYS_")})
    env.update({k: v for k, v in _environment(SERVICES[name]).items() if k.startswith("RECSYS_")})
    try:
        return load_settings(env=env)
    except SettingsError as exc:
        raise AssertionError(f"service {name!r}: its RECSYS_* environment is not valid settings: {exc}"
                             ) from None


ENV_SERVICES = sorted(n for n, s in SERVICES.items()
                      if n in RECSYS_SERVICES or any(k.startswith("RECSYS_") for k in _environment(s)))


@pytest.mark.parametrize("name", ENV_SERVICES)
def test_recsys_environment_variables_are_real_settings(name: str) -> None:
    env = {k: v for k, v in _environment(SERVICES[name]).items() if k.startswith("RECSYS_")}
    try:
        load_settings(env=env)
    except SettingsError as exc:
        pytest.fail(f"service {name!r}: {exc}", pytrace=False)


@pytest.mark.parametrize("name", sorted(RECSYS_SERVICES))
def test_recsys_services_use_the_compose_kafka_and_redis(name: str) -> None:
    s = _settings_of(name)
    assert s.kafka_bootstrap and s.redis_url, (
        f"service {name!r}: RECSYS_KAFKA_BOOTSTRAP and RECSYS_REDIS_URL must be set (empty means "
        "the embedded stack, which is not in this container)")
    deps = _transitive_deps(name)
    kafka_host = s.kafka_bootstrap.split(",")[0].rsplit(":", 1)[0]
    redis_host = urlparse(s.redis_url).hostname or ""
    for what, host in (("Kafka", kafka_host), ("Redis", redis_host)):
        if host in SERVICES:
            assert host in deps, f"service {name!r} uses {what} at {host} but does not depend on it"
    for dep, spec in _depends_on(SERVICES[name]).items():
        assert spec.get("condition"), f"service {name!r}: depends_on {dep} needs a condition"


def test_every_dependency_condition_can_be_met() -> None:
    problems = []
    for name, svc in SERVICES.items():
        for dep, spec in _depends_on(svc).items():
            if dep not in SERVICES:
                problems.append(f"{name} depends on unknown service {dep}")
                continue
            cond = spec.get("condition", "service_started")
            if cond == "service_healthy" and not SERVICES[dep].get("healthcheck"):
                problems.append(f"{name} waits for {dep} to be healthy, but {dep} has no healthcheck")
            if cond == "service_completed_successfully" and SERVICES[dep].get("restart") not in (
                None, "no", "on-failure"
            ):
                problems.append(f"{name} waits for {dep} to complete, but {dep} restarts forever")
    assert not problems, "\n".join(problems)


def test_scorer_listens_on_all_interfaces_and_is_published() -> None:
    scorers = [n for n, a in RECSYS_SERVICES.items() if _parse_cli(a).command == "serve"]
    assert scorers, "no service runs `recsys serve`"
    for name in scorers:
        s = _settings_of(name)
        assert s.grpc_host == "0.0.0.0", (
            f"service {name!r}: RECSYS_GRPC_HOST={s.grpc_host!r}; other containers cannot reach it "
            "unless it is 0.0.0.0")
        port = _parse_cli(RECSYS_SERVICES[name]).port or s.grpc_port
        published = {str(p).rsplit(":", 1)[-1].split("/")[0] if not isinstance(p, dict) else str(p["target"])
                     for p in SERVICES[name].get("ports", [])}
        assert str(port) in published, f"service {name!r}: gRPC port {port} is not published ({published})"


def test_no_unescaped_dollar_signs() -> None:
    # Compose interpolates $VAR / ${VAR} from the host; a shell `$1` must be written `$$1`.
    bad = [f"{path}: {value!r}" for path, value in _strings(COMPOSE)
           if re.search(r"\$(?!\{)", value.replace("$$", ""))]
    assert not bad, "unescaped `$` (Compose would substitute it):\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------------
# topics


def _topic_creator() -> tuple[str, str]:
    for name, svc in SERVICES.items():
        script = "\n".join(_argv(svc.get("entrypoint")) + _argv(svc.get("command")))
        if "kafka-topics.sh" in script and "--create" in script:
            return name, script
    raise AssertionError("no service creates the topics (kafka-topics.sh --create), and the broker "
                         "does not auto-create them")


def test_topic_service_creates_every_topic_the_settings_name() -> None:
    name, script = _topic_creator()
    created = {m.group(1): m.group(2) for m in re.finditer(r"^\s*create\s+(\S+)(.*)$", script, re.M)}
    env = _environment(SERVICES[name])
    partitions = [env.get(v.strip('"{}$'), v) if v.lstrip('"').startswith("$") else v.strip('"')
                  for v in re.findall(r"--partitions\s+(\S+)", script)]
    for svc in sorted(RECSYS_SERVICES):
        s = _settings_of(svc)
        logical = [f.name.removeprefix("topic_") for f in dataclasses.fields(s)
                   if f.name.startswith("topic_") and f.name != "topic_prefix"]
        expected = {s.topic(n) for n in logical}
        missing = expected - set(created)
        assert not missing, f"{name} does not create {sorted(missing)}, which {svc!r} uses"
        assert partitions == [str(s.partitions)], (
            f"{name} creates {partitions} partitions; settings say {s.partitions}")
        for logical_name in KEYED_COMPACTED_TOPICS:
            opts = created[s.topic(logical_name)]
            assert "cleanup.policy=compact" in opts, f"{name}: topic {s.topic(logical_name)} is not compacted"
        assert name in _transitive_deps(svc), f"service {svc!r} does not wait for {name}"


# ------------------------------------------------------------------------------------------
# (d) Dockerfile and build context


def test_services_built_from_an_existing_dockerfile() -> None:
    assert set(BUILT_SERVICES) >= REQUIRED_RECSYS_SERVICES, "stream/serve/sim must be built from our image"
    for name, svc in BUILT_SERVICES.items():
        context, dockerfile = _dockerfile_of(svc)
        assert context.is_dir(), f"service {name!r}: build context {context} does not exist"
        assert dockerfile.is_file(), f"service {name!r}: {dockerfile} does not exist"


@pytest.mark.parametrize("dockerfile", sorted({_dockerfile_of(s)[1] for s in BUILT_SERVICES.values()}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_runs_the_recsys_cli(dockerfile: Path) -> None:
    instrs = _dockerfile_instructions(dockerfile)
    base, stage = _final_stage(instrs)
    runs = [i for i in stage if i.keyword in ("CMD", "ENTRYPOINT")]
    assert runs, f"{dockerfile}: the final stage has no CMD/ENTRYPOINT (it would run {base}'s)"
    entry = [i for i in runs if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in runs if i.keyword == "CMD"]
    argv = (_exec_form(entry[-1]) if entry else []) + (_exec_form(cmd[-1]) if cmd else [])
    assert argv and argv[0] == "recsys", f"{dockerfile}: the image runs {argv}, not the recsys CLI"
    assert _parse_cli(argv[1:]).command in subcommands()

    m = re.match(r"python:(\d+)\.(\d+)", base)
    assert m, f"{dockerfile}: final stage is {base!r}, expected a python:3.x image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"{m.group(1)}.{m.group(2)}" in SpecifierSet(requires), f"{base} does not satisfy {requires}"

    text = "\n".join(f"{i.keyword} {i.args}" for i in instrs)
    assert CPU_TORCH_INDEX in text, f"{dockerfile}: torch must come from https://{CPU_TORCH_INDEX} (no CUDA)"
    assert re.search(r"pip install [^\n]*(\s\.|/src)(\s|$)", text), f"{dockerfile}: no `pip install .`"
    env = {k: v for k, v in _dockerfile_env(stage).items() if k.startswith("RECSYS_")}
    try:
        load_settings(env=env)
    except SettingsError as exc:
        pytest.fail(f"{dockerfile}: ENV {exc}", pytrace=False)


def test_build_context_keeps_what_pip_install_needs() -> None:
    patterns = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()
                if ln.strip() and not ln.lstrip().startswith("#")] if DOCKERIGNORE.is_file() else []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = project["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = sorted(p.name for p in ROOT.iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file()
                      and any(fnmatch.fnmatch(p.name, inc) for inc in includes))
    assert "recsys" in packages
    needed = ["pyproject.toml", *packages]
    readme = project["project"].get("readme")
    if isinstance(readme, str) and (ROOT / readme).is_file():
        needed.append(readme)
    for svc in BUILT_SERVICES.values():
        needed.append(str(_dockerfile_of(svc)[1].relative_to(ROOT)))
    dropped = [n for n in needed if _dockerignored(n, patterns)]
    assert not dropped, f".dockerignore drops what the image build needs: {dropped}"
