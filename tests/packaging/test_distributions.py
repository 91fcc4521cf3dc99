"""Every distribution is release-ready: one version in lockstep, full metadata, the licence and
``py.typed`` in each sdist and wheel, and the pages a contributor needs."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging_helpers import DISTRIBUTIONS, ROOT, project, wheel_dir

import tta_agent_coordination

URL_KEYS = {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
NAMES = {project(directory)["name"]: directory for directory in DISTRIBUTIONS}
VERSION = project("core")["version"]


def test_the_workspace_and_the_noxfile_know_every_distribution() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        members = tomllib.load(file)["tool"]["uv"]["workspace"]["members"]
    assert sorted(members) == sorted(DISTRIBUTIONS)
    noxfile = (ROOT / "noxfile.py").read_text()
    for directory in DISTRIBUTIONS:
        assert f'("{directory}",' in noxfile or f'"{directory}",\n' in noxfile, directory


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_every_distribution_has_the_one_version(directory: str) -> None:
    assert project(directory)["version"] == VERSION


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_siblings_pin_each_other_exactly(directory: str) -> None:
    meta = project(directory)
    specs = list(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        specs += extra
    siblings = [Requirement(spec) for spec in specs if Requirement(spec).name in NAMES]
    if directory != "core":
        assert [r.name for r in siblings] == ["tta-agent-coordination"]
    for requirement in siblings:
        assert str(requirement.specifier) == f"=={VERSION}", str(requirement)


def test_the_core_has_an_extra_for_each_sibling() -> None:
    extras = project("core")["optional-dependencies"]
    pinned = {Requirement(spec).name for specs in extras.values() for spec in specs}
    assert pinned >= set(NAMES) - {"tta-agent-coordination"}


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_every_distribution_has_full_metadata(directory: str) -> None:
    meta = project(directory)
    assert meta["license"] == "MIT"
    assert meta["authors"] == [{"name": "The tta-agent-coordination developers"}]
    assert set(meta["urls"]) == URL_KEYS
    assert all(url.startswith("https://") for url in meta["urls"].values())
    assert meta["requires-python"] == ">=3.11"
    assert meta["description"]
    assert (ROOT / directory / meta["readme"]).is_file()
    classifiers = set(meta["classifiers"])
    assert {"Typing :: Typed", "Operating System :: OS Independent"} <= classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert "Programming Language :: Python :: 3.11" in classifiers


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_every_distribution_ships_the_licence_and_py_typed(directory: str) -> None:
    licence = (ROOT / directory / "LICENSE").read_text()
    assert licence == (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License")
    assert (ROOT / directory / "src" / DISTRIBUTIONS[directory] / "py.typed").is_file()


def test_version_attribute_is_the_installed_metadata() -> None:
    installed = importlib.metadata.version("tta-agent-coordination")
    assert tta_agent_coordination.__version__ == installed == VERSION


@pytest.fixture(scope="module")
def built() -> Path:
    """The built sdists and wheels (skip without them, fail under CI)."""
    return wheel_dir()


def _built(directory: Path, package: str) -> tuple[Path, Path]:
    (wheel,) = directory.glob(f"{package}-{VERSION}-py3-none-any.whl")
    (sdist,) = directory.glob(f"{package}-{VERSION}.tar.gz")
    return wheel, sdist


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_built_wheel_is_complete(directory: str, built: Path) -> None:
    package = DISTRIBUTIONS[directory]
    wheel, _ = _built(built, package)
    info = f"{package}-{VERSION}.dist-info"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = email.message_from_bytes(archive.read(f"{info}/METADATA"))
        licence = archive.read(f"{info}/licenses/LICENSE").decode()
    assert f"{package}/py.typed" in names
    assert f"{package}/__init__.py" in names
    assert licence == (ROOT / "LICENSE").read_text()
    assert metadata["Name"] == project(directory)["name"]
    assert metadata["Version"] == VERSION
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License-File"] == "LICENSE"
    urls = {url.split(",", 1)[0] for url in metadata.get_all("Project-URL") or []}
    assert urls == URL_KEYS
    assert "Typing :: Typed" in (metadata.get_all("Classifier") or [])
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert str(metadata.get_payload()).strip()  # the README is the long description
    for spec in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(spec)
        if requirement.name in NAMES:
            assert str(requirement.specifier) == f"=={VERSION}"


@pytest.mark.parametrize("directory", DISTRIBUTIONS)
def test_built_sdist_is_complete(directory: str, built: Path) -> None:
    package = DISTRIBUTIONS[directory]
    _, sdist = _built(built, package)
    top = f"{package}-{VERSION}"
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    expected = {"LICENSE", "PKG-INFO", "pyproject.toml", "README.md", f"src/{package}/py.typed"}
    assert {f"{top}/{name}" for name in expected} <= names


def _nox_sessions() -> list[str]:
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("session" in ast.unparse(decorator) for decorator in node.decorator_list)
    ]


def test_contributing_says_how_to_run_every_nox_session() -> None:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    sessions = _nox_sessions()
    assert {"tests", "lint", "typecheck", "docs", "build"} <= set(sessions)
    for session in sessions:
        assert f"`nox -s {session}`" in text, session


def test_changelog_keeps_an_unreleased_section() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n")
    assert "\n## Unreleased\n" in text
