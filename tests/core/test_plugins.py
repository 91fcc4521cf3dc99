from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator
from typing import Any, cast

import pytest

from tta_agent_coordination import (
    BackendNotFoundError,
    BackendOptions,
    PluginLoadError,
    PluginLoadWarning,
    ValidationError,
    connect,
    installed_schemes,
)
from tta_agent_coordination.backends.memory import MemoryBackend
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.plugins import (
    BLOCK_ENV,
    ENTRY_POINT_GROUP,
    PluginRegistry,
    backend_from_client,
    plugin_registry,
)


def make_backend(url: str, options: BackendOptions) -> MemoryBackend:
    return MemoryBackend(options)


def not_a_backend(url: str, options: BackendOptions) -> object:
    return object()


NOT_CALLABLE = 42


class SchemePlugin:
    def __init__(self, schemes: dict[str, str]) -> None:
        self.schemes = schemes

    @hookimpl
    def tta_backend_schemes(self) -> dict[str, str]:
        return self.schemes


class ClientPlugin:
    @hookimpl
    def tta_backend_from_client(self, client: Any, namespace: str) -> Any:
        if isinstance(client, FakeClient):
            return MemoryBackend(BackendOptions(namespace=namespace))
        return None


class FakeClient:
    pass


@pytest.fixture
def registered() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        plugin_registry().unregister(name)


def register(names: list[str], plugin: object, name: str) -> None:
    plugin_registry().register(plugin, name=name)
    names.append(name)


def test_the_memory_driver_comes_through_its_entry_point() -> None:
    (ep,) = [
        ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "memory"
    ]
    module = ep.load()
    assert module.tta_backend_schemes() == {
        "memory": "tta_agent_coordination.backends.memory:MemoryBackend.from_url"
    }
    assert "memory" in installed_schemes()


def test_connect_defaults_to_memory_and_honours_the_namespace() -> None:
    assert isinstance(connect(), MemoryBackend)
    backend = connect("memory://?namespace=app")
    assert backend.options.namespace == "app"
    assert connect("MEMORY://", namespace="b").options.namespace == "b"


def test_unknown_scheme_names_the_installed_ones() -> None:
    with pytest.raises(BackendNotFoundError, match=r"installed: .*memory://") as info:
        connect("acme://somewhere")
    assert "pip install" not in str(info.value)


@pytest.mark.parametrize("scheme", ["redis", "rediss", "redis+cluster"])
def test_known_but_missing_driver_says_how_to_install_it(
    scheme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(BLOCK_ENV, "redis")  # as if the Redis driver were not installed
    registry = PluginRegistry()
    with pytest.raises(
        BackendNotFoundError, match=r"pip install 'tta-agent-coordination\[redis\]'"
    ):
        registry.factory(scheme)


@pytest.mark.parametrize("url", ["", "memory", "://x", 42])
def test_bad_urls(url: Any) -> None:
    with pytest.raises(ValidationError):
        connect(url)


def test_a_plugin_registered_in_code_serves_its_scheme(registered: list[str]) -> None:
    register(registered, SchemePlugin({"acme": f"{__name__}:make_backend"}), "acme")
    assert "acme" in installed_schemes()
    assert isinstance(connect("acme://x?namespace=n"), MemoryBackend)


def test_a_later_plugin_wins_a_scheme(registered: list[str]) -> None:
    register(registered, SchemePlugin({"acme": f"{__name__}:not_a_backend"}), "acme1")
    register(registered, SchemePlugin({"acme": f"{__name__}:make_backend"}), "acme2")
    assert isinstance(connect("acme://"), MemoryBackend)


@pytest.mark.parametrize(
    ("reference", "match"),
    [
        ("no_colon_here", "module:attribute"),
        ("tta_nonexistent_module_xyz:f", "cannot load"),
        (f"{__name__}:missing_attr", "cannot load"),
        (f"{__name__}:NOT_CALLABLE", "not callable"),
        (f"{__name__}:not_a_backend", "not a Backend"),
    ],
)
def test_broken_plugin_references(registered: list[str], reference: str, match: str) -> None:
    register(registered, SchemePlugin({"broken": reference}), "broken")
    with pytest.raises(PluginLoadError, match=match):
        connect("broken://")


def test_backend_from_client(registered: list[str]) -> None:
    with pytest.raises(BackendNotFoundError, match="FakeClient"):
        backend_from_client(FakeClient(), "ao")
    register(registered, ClientPlugin(), "client")
    backend = backend_from_client(FakeClient(), "ao")
    assert backend.options.namespace == "ao"
    with pytest.raises(BackendNotFoundError):
        backend_from_client(object(), "ao")


class FakeEntryPoint:
    def __init__(self, name: str, target: object | None, error: Exception | None = None) -> None:
        self.name = name
        self.target = target
        self.error = error

    def load(self) -> object:
        if self.error is not None:
            raise self.error
        return self.target


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> list[FakeEntryPoint]:
    points: list[FakeEntryPoint] = []

    def entry_points(*, group: str) -> list[FakeEntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    return points


def test_a_plugin_that_fails_to_load_warns_when_listing_and_errors_when_asked_for(
    fake_entry_points: list[FakeEntryPoint],
) -> None:
    fake_entry_points.append(FakeEntryPoint("acme", None, ImportError("no acme_sdk")))
    fake_entry_points.append(
        FakeEntryPoint("good", SchemePlugin({"good": f"{__name__}:make_backend"}))
    )
    registry = PluginRegistry()
    with pytest.warns(PluginLoadWarning, match="acme"):
        assert registry.schemes() == {"good": f"{__name__}:make_backend"}
    assert set(registry.failed) == {"acme"}
    with pytest.raises(PluginLoadError, match="acme") as info:
        registry.factory("acme")
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(PluginLoadError):
        registry.factory("acme+cluster")
    with pytest.raises(BackendNotFoundError, match="failed to load: acme"):
        registry.factory("other")
    assert cast("object", registry.factory("good")) is make_backend


def test_blocked_plugins_are_not_loaded(
    fake_entry_points: list[FakeEntryPoint], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points.append(FakeEntryPoint("bad", None, RuntimeError("boom")))
    fake_entry_points.append(
        FakeEntryPoint("good", SchemePlugin({"good": f"{__name__}:make_backend"}))
    )
    monkeypatch.setenv(BLOCK_ENV, " bad , good ")
    registry = PluginRegistry()
    assert registry.schemes() == {}
    assert registry.failed == {}
    with pytest.raises(BackendNotFoundError, match="installed: none"):
        registry.factory("good")


def test_entry_points_load_once(fake_entry_points: list[FakeEntryPoint]) -> None:
    plugin = SchemePlugin({"good": f"{__name__}:make_backend"})
    fake_entry_points.append(FakeEntryPoint("good", plugin))
    fake_entry_points.append(FakeEntryPoint("good", plugin))  # a duplicate name is skipped
    registry = PluginRegistry()
    assert registry.schemes() == {"good": f"{__name__}:make_backend"}
    assert registry.schemes() == {"good": f"{__name__}:make_backend"}
