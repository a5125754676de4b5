"""deploy/Dockerfile and the build context, checked without a Docker engine: every service
built from our image has an existing Dockerfile that runs the recsys CLI on a supported
python image, installs torch from the CPU index, and the build context (.dockerignore) keeps
what `pip install .` needs."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from core.settings import SettingsError, load_settings
from recsys.cli.main import subcommands
from tests.compose_files import (
    BUILT_SERVICES,
    COMPOSE,
    ROOT,
    Instruction,
    dockerfile_env,
    dockerfile_instructions,
    dockerfile_of,
    final_stage,
    mounts_of,
    parse_cli,
    services_by_role,
)

DOCKERIGNORE = ROOT / ".dockerignore"
CPU_TORCH_INDEX = "download.pytorch.org/whl/cpu"


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


# ------------------------------------------------------------------------------------------
# (d) Dockerfile and build context


def test_services_built_from_an_existing_dockerfile() -> None:
    role_services = {n for names in services_by_role(COMPOSE["services"]).values() for n in names}
    not_built = sorted(role_services - set(BUILT_SERVICES))
    assert not not_built, f"services running `recsys up` roles must be built from our image: {not_built}"
    for name, svc in BUILT_SERVICES.items():
        context, dockerfile = dockerfile_of(svc)
        assert context.is_dir(), f"service {name!r}: build context {context} does not exist"
        assert dockerfile.is_file(), f"service {name!r}: {dockerfile} does not exist"


@pytest.mark.parametrize("dockerfile", sorted({dockerfile_of(s)[1] for s in BUILT_SERVICES.values()}),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_dockerfile_runs_the_recsys_cli(dockerfile: Path) -> None:
    instrs = dockerfile_instructions(dockerfile)
    base, stage = final_stage(instrs)
    runs = [i for i in stage if i.keyword in ("CMD", "ENTRYPOINT")]
    assert runs, f"{dockerfile}: the final stage has no CMD/ENTRYPOINT (it would run {base}'s)"
    entry = [i for i in runs if i.keyword == "ENTRYPOINT"]
    cmd = [i for i in runs if i.keyword == "CMD"]
    argv = (_exec_form(entry[-1]) if entry else []) + (_exec_form(cmd[-1]) if cmd else [])
    assert argv and argv[0] == "recsys", f"{dockerfile}: the image runs {argv}, not the recsys CLI"
    assert parse_cli(argv[1:]).command in subcommands()

    m = re.match(r"python:(\d+)\.(\d+)", base)
    assert m, f"{dockerfile}: final stage is {base!r}, expected a python:3.x image"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert f"{m.group(1)}.{m.group(2)}" in SpecifierSet(requires), f"{base} does not satisfy {requires}"

    text = "\n".join(f"{i.keyword} {i.args}" for i in instrs)
    assert CPU_TORCH_INDEX in text, f"{dockerfile}: torch must come from https://{CPU_TORCH_INDEX} (no CUDA)"
    assert re.search(r"pip install [^\n]*(\s\.|/src)(\s|$)", text), f"{dockerfile}: no `pip install .`"
    env = {k: v for k, v in dockerfile_env(stage).items() if k.startswith("RECSYS_")}
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
        needed.append(str(dockerfile_of(svc)[1].relative_to(ROOT)))
    dropped = [n for n in needed if _dockerignored(n, patterns)]
    assert not dropped, f".dockerignore drops what the image build needs: {dropped}"


def _shell_commands(stage: list[Instruction]) -> list[list[str]]:
    """The simple commands of the stage's RUN instructions, in order (split on && ; |)."""
    out = []
    for ins in stage:
        if ins.keyword != "RUN":
            continue
        for part in re.split(r"&&|;|\|\|?", ins.args):
            with contextlib.suppress(ValueError):
                if tokens := shlex.split(part):
                    out.append(tokens)
    return out


def volume_ownership_problems(dockerfile: Path, targets: set[str]) -> list[str]:
    """Each named-volume mount point exists in the image, owned by its USER: a fresh named
    volume takes the mount point's ownership, so the non-root process can write to it."""
    _base, stage = final_stage(dockerfile_instructions(dockerfile))
    users = [i.args.split(":")[0] for i in stage if i.keyword == "USER"]
    if not users or users[-1] in ("root", "0"):
        return [f"{dockerfile}: the image runs as root"]
    user = users[-1]
    made: dict[str, int] = {}  # path -> index of the command that created it
    owned: list[tuple[int, bool, str]] = []  # (index, recursive, path) chowned to the user
    for i, tokens in enumerate(_shell_commands(stage)):
        flags = {t for t in tokens[1:] if t.startswith("-")}
        paths = [t for t in tokens[1:] if not t.startswith("-")]
        if tokens[0] == "mkdir":
            for path in paths:
                chain = [path] if "-p" not in flags else [str(q) for q in (Path(path), *Path(path).parents)]
                for q in chain:
                    made.setdefault(q, i)
        elif tokens[0] == "chown" and paths and paths[0].split(":")[0] == user:
            owned += [(i, "-R" in flags, path) for path in paths[1:]]
    problems = []
    for target in sorted(targets):
        if target not in made:
            problems.append(f"{dockerfile}: {target} (a named volume's mount point) is not created in "
                            f"the image: Docker would create it owned by root, unwritable by {user}")
            continue
        ok = any(path == target or (recursive and i > made[target] and Path(target).is_relative_to(path))
                 for i, recursive, path in owned)
        if not ok:
            problems.append(f"{dockerfile}: {target} (a named volume's mount point) is not chowned to {user}")
    return problems


def test_named_volumes_are_writable_by_the_image_user() -> None:
    volumes = COMPOSE.get("volumes") or {}
    by_file: dict[Path, set[str]] = {}
    for svc in BUILT_SERVICES.values():
        targets = {m.target for m in mounts_of(svc, volumes) if m.named and not m.read_only}
        by_file.setdefault(dockerfile_of(svc)[1], set()).update(targets)
    problems = [p for f, targets in sorted(by_file.items()) for p in volume_ownership_problems(f, targets)]
    assert not problems, "\n".join(problems)
