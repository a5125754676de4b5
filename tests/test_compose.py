"""docker-compose.yml and deploy/Dockerfile, checked without a Docker engine.

- the compose file is valid against the Compose Specification schema (and the validator is
  shown to reject broken files, so a pass means something);
- every long-running process of `recsys up` (``recsys.cli.up.ROLES``, which its start-up code
  uses) is a service, matched by the command it runs;
- every `recsys ...` command names a real subcommand and parses with the real CLI parser;
- retrain, the scorer and the embeddings dataflow share one named volume as the model registry;
- every RECSYS_* variable is a real setting, and the addresses point at compose services that
  the process waits for; the scorer listens on all interfaces and is published;
- the topic-creation service creates every topic the settings name, compacted where keyed.

The Dockerfile and the build context: ``test_dockerfile.py``.
"""

from __future__ import annotations

import ast
import copy
import inspect
import re
from typing import Any
from urllib.parse import urlparse

import pytest
from jsonschema import Draft7Validator, FormatChecker

from core.settings import SettingsError, load_settings
from recsys.cli import up
from recsys.cli.main import subcommands
from tests.compose_files import (
    BUILT_SERVICES,
    COMPOSE,
    COMPOSE_FILE,
    EMBEDDED_INFRA,
    RECSYS_SERVICES,
    SERVICES,
    argv_of,
    environment_of,
    missing_roles,
    parse_cli,
    recsys_variable_problems,
    registry_problems,
    services_by_role,
    settings_of,
)
from tests.compose_schema import ComposeSchemaUnavailable, load_compose_schema

KEYED_COMPACTED_TOPICS = ("catalog", "users")  # DESIGN: keyed by item / user, compacted


# ------------------------------------------------------------------------------------------
# helpers


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


def _children_up_starts() -> dict[str, str]:
    """name -> source of every `start(name, ...)` call in `recsys up`'s run()."""
    tree = ast.parse(inspect.getsource(up.run))
    return {call.args[0].value: ast.unparse(call) for call in ast.walk(tree)
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "start"
            and call.args and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)}


def test_up_starts_its_roles_from_the_roles_table() -> None:
    # ROLES is the list the compose check uses: it must be what `up` really starts
    started = _children_up_starts()
    assert started, "found no start(name, ...) call in recsys.cli.up.run"
    unlisted = sorted(set(started) - set(up.ROLES) - set(EMBEDDED_INFRA))
    assert not unlisted, f"`recsys up` starts {unlisted}, which recsys.cli.up.ROLES does not list"
    not_started = sorted(set(up.ROLES) - set(started))
    assert not not_started, f"recsys.cli.up.ROLES lists {not_started}, which `recsys up` never starts"
    source = inspect.getsource(up.run)
    unused = [r for r in up.ROLES if f'ROLES["{r}"]' not in source]
    assert not unused, f"`recsys up` starts {unused} with an argv of its own, not ROLES[...]"
    for role, argv in up.ROLES.items():
        assert parse_cli(list(argv)).command in subcommands(), f"ROLES[{role!r}] = {argv} does not parse"


def test_every_role_of_recsys_up_is_a_service() -> None:
    missing = missing_roles(SERVICES)
    assert not missing, f"{COMPOSE_FILE.name}:\n  " + "\n  ".join(missing)


@pytest.mark.parametrize("role", sorted(up.ROLES))
def test_role_check_names_a_missing_role(role: str) -> None:
    # one service per role, running it with extra options as compose services do; then drop one
    services = {f"svc-{r}": {"command": ["recsys", *argv, *(["--quiet"] if argv[0] == "sim" else [])]}
                for r, argv in up.ROLES.items()}
    assert missing_roles(services) == [], services_by_role(services)
    del services[f"svc-{role}"]
    missing = missing_roles(services)
    assert len(missing) == 1 and repr(role) in missing[0], (
        f"without the service running {role!r}, the check reported {missing}")


def test_role_check_counts_only_services_compose_starts() -> None:
    doc = copy.deepcopy(COMPOSE)
    for name in services_by_role(doc["services"])["retrain"]:
        doc["services"][name]["profiles"] = ["training"]
    assert any("'retrain'" in m for m in missing_roles(doc["services"]))


def test_model_registry_is_one_volume_shared_by_retrain_and_the_readers() -> None:
    problems = registry_problems(COMPOSE)
    assert not problems, "\n".join(problems)


def _registry_mutations() -> list[tuple[str, Any, str]]:
    def reader_unmounted(doc: dict[str, Any]) -> None:
        svc = doc["services"]["serve"]
        svc["volumes"] = [v for v in svc["volumes"] if "/models" not in str(v)]

    def writer_read_only(doc: dict[str, Any]) -> None:
        svc = doc["services"]["retrain"]
        svc["volumes"] = [f"{v}:ro" if "/models" in str(v) else v for v in svc["volumes"]]

    def other_volume(doc: dict[str, Any]) -> None:
        doc["volumes"]["other-registry"] = None
        svc = doc["services"]["embeddings"]
        svc["volumes"] = ["other-registry:" + str(v).split(":", 1)[1] if "/models" in str(v) else v
                          for v in svc["volumes"]]

    return [("reader without the registry", reader_unmounted, "'serve'"),
            ("writer mounts it read-only", writer_read_only, "read-only"),
            ("a reader on another volume", other_volume, "different volumes")]


@pytest.mark.parametrize(("label", "mutate", "expect"), _registry_mutations(),
                         ids=[m[0] for m in _registry_mutations()])
def test_registry_check_rejects(label: str, mutate: Any, expect: str) -> None:
    doc = copy.deepcopy(COMPOSE)
    mutate(doc)
    problems = registry_problems(doc)
    assert any(expect in p for p in problems), f"{label}: expected {expect!r} in {problems}"


def test_services_built_from_our_image_run_the_recsys_cli() -> None:
    bad = [n for n, s in BUILT_SERVICES.items() if s.get("command") is not None and n not in RECSYS_SERVICES]
    assert not bad, f"services built from deploy/Dockerfile that do not run `recsys ...`: {bad}"


@pytest.mark.parametrize("name", sorted(RECSYS_SERVICES))
def test_recsys_command_names_a_real_subcommand_and_parses(name: str) -> None:
    argv = RECSYS_SERVICES[name]
    known = subcommands()
    args = parse_cli(argv)
    assert args.command in known, (
        f"service {name!r}: `recsys {' '.join(argv)}` names no subcommand; known: {sorted(known)}")
    address = getattr(args, "address", None)
    if isinstance(address, str) and address:
        host = address.rsplit(":", 1)[0]
        assert host in SERVICES, f"service {name!r}: --address {address} is not a compose service"
        assert host in _transitive_deps(name), f"service {name!r} calls {host} but does not depend on it"


# ------------------------------------------------------------------------------------------
# (c) settings from the environment


ENV_SERVICES = sorted(n for n, s in SERVICES.items()
                      if n in RECSYS_SERVICES or any(k.startswith("RECSYS_") for k in environment_of(s)))


@pytest.mark.parametrize("name", ENV_SERVICES)
def test_recsys_environment_variables_are_real_settings(name: str) -> None:
    env = {k: v for k, v in environment_of(SERVICES[name]).items() if k.startswith("RECSYS_")}
    try:
        load_settings(env=env)
    except SettingsError as exc:
        pytest.fail(f"service {name!r}: {exc}", pytrace=False)


def test_every_recsys_variable_in_the_file_is_a_setting() -> None:
    problems = recsys_variable_problems(COMPOSE)
    assert not problems, f"{COMPOSE_FILE.name}:\n  " + "\n  ".join(problems)


def test_recsys_variable_check_rejects_typos() -> None:
    doc = copy.deepcopy(COMPOSE)
    doc["x-recsys-env"]["RECSYS_EMBEDDING_METRICS_PORT"] = "9105"  # embeddingS
    check = doc["services"]["embeddings"]["healthcheck"]["test"]
    check[-1] = check[-1].replace("RECSYS_EMBEDDINGS_METRICS_PORT", "RECSYS_LABELS_METRICS_PORT")
    problems = recsys_variable_problems(doc)
    assert any("RECSYS_EMBEDDING_METRICS_PORT is not a setting" in p for p in problems), problems
    assert any("'embeddings'" in p and "RECSYS_LABELS_METRICS_PORT" in p for p in problems), problems


@pytest.mark.parametrize("name", sorted(RECSYS_SERVICES))
def test_recsys_services_use_the_compose_kafka_and_redis(name: str) -> None:
    s = settings_of(name)
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
    scorers = [n for n, a in RECSYS_SERVICES.items() if parse_cli(a).command == "serve"]
    assert scorers, "no service runs `recsys serve`"
    for name in scorers:
        s = settings_of(name)
        assert s.grpc_host == "0.0.0.0", (
            f"service {name!r}: RECSYS_GRPC_HOST={s.grpc_host!r}; other containers cannot reach it "
            "unless it is 0.0.0.0")
        port = parse_cli(RECSYS_SERVICES[name]).port or s.grpc_port
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
        script = "\n".join(argv_of(svc.get("entrypoint")) + argv_of(svc.get("command")))
        if "kafka-topics.sh" in script and "--create" in script:
            return name, script
    raise AssertionError("no service creates the topics (kafka-topics.sh --create), and the broker "
                         "does not auto-create them")


def test_topic_service_creates_every_topic_the_settings_name() -> None:
    name, script = _topic_creator()
    created = {m.group(1): m.group(2) for m in re.finditer(r"^\s*create\s+(\S+)(.*)$", script, re.M)}
    env = environment_of(SERVICES[name])
    partitions = [env.get(v.strip('"{}$'), v) if v.lstrip('"').startswith("$") else v.strip('"')
                  for v in re.findall(r"--partitions\s+(\S+)", script)]
    for svc in sorted(RECSYS_SERVICES):
        s = settings_of(svc)
        logical = [name.removeprefix("topic_") for name in type(s).model_fields
                   if name.startswith("topic_") and name != "topic_prefix"]
        expected = {s.topic(n) for n in logical}
        missing = expected - set(created)
        assert not missing, f"{name} does not create {sorted(missing)}, which {svc!r} uses"
        assert partitions == [str(s.partitions)], (
            f"{name} creates {partitions} partitions; settings say {s.partitions}")
        for logical_name in KEYED_COMPACTED_TOPICS:
            opts = created[s.topic(logical_name)]
            assert "cleanup.policy=compact" in opts, f"{name}: topic {s.topic(logical_name)} is not compacted"
        assert name in _transitive_deps(svc), f"service {svc!r} does not wait for {name}"


