"""Every task a person or CI runs: ``nox`` runs lint, typecheck, tests, conformance and docs.

``nox -s demo`` runs the demo, ``nox -s build`` builds every distribution's sdist and wheel into
``dist/``, ``nox -s bench`` runs the benchmarks (CONTRIBUTING.md says more). Sessions use the uv
backend and share one build of every distribution per nox run (``.nox/_wheels``), made exactly
as ``nox -s build`` makes a release.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "typecheck", "tests", "conformance", "docs"]
nox.options.reuse_venv = "yes"

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
WHEELS = ROOT / ".nox" / "_wheels"
DIST = ROOT / "dist"
SITE = ROOT / "site"
# The wheel-install test (tests/packaging/) installs from this directory, as a user would.
WHEEL_DIR_ENV = "TTA_WHEEL_DIR"
EXAMPLE = ROOT / "docs" / "examples" / "acme-backend"
# The rebuilt wheel keeps its version: make uv replace what a reused venv holds.
REINSTALL = ["--reinstall-package", "tta-agent-coordination"]
PYTHON = ["3.11"]
# Every published distribution of the workspace: (directory, wheel-name prefix, project name).
DISTRIBUTIONS = [
    ("core", "tta_agent_coordination-", "tta-agent-coordination"),
    ("backends/redis", "tta_agent_coordination_redis-", "tta-agent-coordination-redis"),
    (
        "contrib/prometheus",
        "tta_agent_coordination_prometheus-",
        "tta-agent-coordination-prometheus",
    ),
    (
        "contrib/opentelemetry",
        "tta_agent_coordination_opentelemetry-",
        "tta-agent-coordination-opentelemetry",
    ),
]


def _coverage_python() -> str:
    """The interpreter for the measured test run: the newest CPython >= 3.12 on this machine.

    CPython 3.11's tracing loses lines after a coroutine is cancelled (a resumed-by-throw frame
    emits no "call" event, so coverage.py's line tracer desynchronises), which would make the
    100% line-coverage gate fail on code that did run. 3.12+ traces through sys.monitoring.
    Set TTA_TEST_PYTHON to choose; without a 3.12+ the run falls back to 3.11 and says so.
    """
    chosen = os.environ.get("TTA_TEST_PYTHON")
    if chosen:
        return chosen
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which(f"python3.{minor}") for minor in (14, 13, 12)]
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/3.1[2-9]*/bin/python3"), reverse=True)
    for candidate in candidates:
        if candidate is None:
            continue
        probe = [candidate, "-c", ""]
        if subprocess.run(probe, check=False, capture_output=True).returncode == 0:
            return candidate
    return "3.11"


TEST_PYTHON = _coverage_python()


def _group(name: str) -> list[str]:
    return list(nox.project.dependency_groups(PYPROJECT, name))


def _build_distributions(session: nox.Session, out_dir: Path) -> None:
    """Build every distribution's sdist, then its wheel from that sdist, into ``out_dir``."""
    for old in out_dir.glob("*"):
        old.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    for distribution, _, _ in DISTRIBUTIONS:
        session.run("uv", "build", "--out-dir", str(out_dir), distribution, external=True)


def _build_wheels(session: nox.Session) -> None:
    """Build every distribution once per nox run (sessions install the same files)."""
    marker = WHEELS / f"built-{os.getppid()}-{os.getpid()}"
    if marker.exists():
        return
    _build_distributions(session, WHEELS)
    marker.touch()


def _core_wheel(session: nox.Session) -> str:
    """The core's wheel (built once per nox run)."""
    _build_wheels(session)
    (wheel,) = WHEELS.glob("tta_agent_coordination-*.whl")
    return str(wheel)


def _all_wheels(session: nox.Session) -> list[str]:
    """Every distribution's wheel (built once per nox run), with the flags that reinstall them."""
    _build_wheels(session)
    args: list[str] = []
    for _, prefix, project in DISTRIBUTIONS:
        (wheel,) = WHEELS.glob(f"{prefix}*.whl")
        args += ["--reinstall-package", project, str(wheel)]
    return args


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Run the demo on the in-memory default (pass extra arguments after --)."""
    session.install(*REINSTALL, _core_wheel(session))
    session.run("python", "-m", "tta_agent_coordination.demo", *session.posargs)


@nox.session(python=TEST_PYTHON)
def tests(session: nox.Session) -> None:
    """The test suite on the installed wheel, with the core's line coverage held at 100%."""
    if TEST_PYTHON == "3.11":
        session.warn("no Python >= 3.12 found: coverage on 3.11 undercounts (see noxfile)")
    session.install(*_all_wheels(session), *_group("test"))
    env = {
        "HYPOTHESIS_PROFILE": os.environ.get(
            "HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"
        ),
        WHEEL_DIR_ENV: str(WHEELS),
    }
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", "--durations=15", *session.posargs, env=env)
    session.run("coverage", "combine")
    session.run("coverage", "report")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict and basedpyright in strict mode."""
    editable = [arg for directory, _, _ in DISTRIBUTIONS for arg in ("-e", f"./{directory}")]
    session.install(*editable, *_group("typecheck"))
    session.run("mypy")
    python = Path(session.virtualenv.location) / "bin" / "python"
    session.run("basedpyright", "--pythonpath", str(python))


@nox.session(python=PYTHON)
def conformance(session: nox.Session) -> None:
    """A third-party driver passes the conformance suite shipped in the core's wheel.

    A fresh venv gets the shared core wheel, the example driver docs/examples/acme-backend
    (found only through its entry point) and the test tools; the example's one-class test file
    runs the whole suite, then the packaged suite runs with no file at all (--pyargs).
    """
    session.install(
        *REINSTALL,
        "--reinstall-package",
        "acme-tta-backend",
        _core_wheel(session),
        str(EXAMPLE),
        *_group("test"),
    )
    session.chdir(EXAMPLE)
    session.run("pytest", "-p", "no:cacheprovider", *session.posargs)
    session.run(
        "pytest",
        "-p",
        "no:cacheprovider",
        "--pyargs",
        "tta_agent_coordination.testing",
        "--tta-backend=acme://",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Every distribution's sdist and wheel into dist/, ready to upload (twine checks them)."""
    _build_distributions(session, DIST)
    built = sorted([*DIST.glob("*.tar.gz"), *DIST.glob("*.whl")])
    session.install("twine>=6.1")
    session.run("twine", "check", "--strict", *(str(path) for path in built))
    for path in built:
        session.log(f"built {path.relative_to(ROOT)}")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml) into site/, failing on any warning (--strict).

    mkdocstrings reads the API reference from the sources, so nothing is installed but the
    docs group. Extra arguments go to ``mkdocs build``, e.g. ``nox -s docs -- --verbose``.
    """
    session.install(*_group("docs"))
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--clean",
        "--site-dir",
        str(SITE),
        *session.posargs,
        env={"NO_MKDOCS_2_WARNING": "1"},  # mkdocs-material's banner about its future
    )
    # docs/_griffe_rst.py turns the docstrings' Sphinx roles into code spans: none may be left.
    role = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):(?:`|<code)")
    pages = SITE.rglob("*.html")
    leftovers = [str(p.relative_to(SITE)) for p in pages if role.search(p.read_text())]
    if leftovers:
        session.error(f"Sphinx roles shown as text in {leftovers}")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """The benchmark suite (issue 9; not run by default): ``python -m benchmarks`` on the wheels.

    Starts its own redis-server (the ``redis-server`` binary must be installed). Arguments go
    to the command, e.g. ``nox -s bench -- --peers`` or ``nox -s bench -- --quick``.
    """
    session.install(*_all_wheels(session), "-r", "benchmarks/requirements.txt")
    session.run("python", "-m", "benchmarks", *session.posargs)
