"""The worker: ``tta_agent_coordination.worker`` in-process (asyncio and trio) and ``tta-coord
worker`` through typer's runner on a named ``memory://`` store.

Handlers live in modules written to ``tmp_path``; stops are triggered through the Worker's
API or by a real signal sent from inside a running handler (so the signal receiver is
certainly installed), never after a sleep.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import JsonValue
from typer.testing import CliRunner, Result

from tta_agent_coordination import (
    AgentConflictError,
    AgentId,
    AgentMessage,
    BackendUnavailableError,
    Capability,
    Delivery,
    RegistryEventKind,
    ValidationError,
    connect,
)
from tta_agent_coordination.cli import app
from tta_agent_coordination.metrics import RecordingMetrics
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination.registry import AgentRegistry, Registration
from tta_agent_coordination.retry import RetryPolicy
from tta_agent_coordination.worker import (
    WORKER_HANDLERS_RUNNING,
    ImportedHandler,
    StopReason,
    Worker,
    declared_capabilities,
    default_instance,
    import_handler,
    parse_capability,
    run_worker,
)

AGENT = AgentId("svc", "w1")
SHARED = AgentId("svc")


# -- handler modules written to tmp_path ----------------------------------------------------


class Modules:
    """Writes uniquely named handler modules to a directory on sys.path; forgets them after."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.names: list[str] = []

    def write(self, source: str, name: str | None = None) -> str:
        name = name or f"handlers_{uuid.uuid4().hex[:10]}"
        (self.directory / f"{name}.py").write_text(textwrap.dedent(source))
        self.names.append(name)
        return name


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Modules]:
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    found = Modules(tmp_path)
    yield found
    for name in found.names:
        sys.modules.pop(name, None)


# -- parse_capability, import_handler, declared_capabilities, default_instance ---------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("summarise", Capability("summarise")),
        ("summarise@1.2", Capability("summarise", "1.2")),
        ("summarise@1.2:en,fr", Capability("summarise", "1.2", ["en", "fr"])),
        ("summarise:en", Capability("summarise", "0", ["en"])),
    ],
)
def test_parse_capability(text: str, expected: Capability) -> None:
    assert parse_capability(text) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "use NAME[@VERSION]"),
        ("@1.2", "use NAME[@VERSION]"),
        ("a b", "String should match pattern"),
        ("a@notaversion", "not a PEP 440 version"),
    ],
)
def test_parse_capability_refuses_bad_text_in_one_line(text: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_capability(text)
    assert words in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_import_handler_finds_the_function_and_module_capabilities(modules: Modules) -> None:
    name = modules.write(
        """
        from tta_agent_coordination import Capability
        CAPABILITIES = ["summarise@1.2:en", Capability("translate", "2")]
        async def handle(delivery):
            return None
        """
    )
    imported = import_handler(f"{name}:handle")
    assert imported.spec == f"{name}:handle"
    assert imported.handler is sys.modules[name].handle
    assert imported.capabilities == (
        Capability("summarise", "1.2", ["en"]),
        Capability("translate", "2"),
    )


def test_the_handlers_own_capabilities_win_over_the_modules(modules: Modules) -> None:
    name = modules.write(
        """
        CAPABILITIES = ["module-level"]
        class Agent:
            async def handle(self, delivery):
                return None
        agent = Agent()
        async def handle(delivery):
            return None
        handle.capabilities = ["own@3"]
        class Callable:
            capabilities = ()
            async def __call__(self, delivery):
                return None
        instance = Callable()
        """
    )
    assert import_handler(f"{name}:handle").capabilities == (Capability("own", "3"),)
    method = import_handler(f"{name}:agent.handle")  # a dotted attribute: a bound method
    assert method.capabilities == (Capability("module-level"),)
    assert import_handler(f"{name}:instance").capabilities == ()  # an async callable object


def test_import_paths_go_first_on_sys_path_once(modules: Modules, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    name = f"far_{uuid.uuid4().hex[:10]}"
    (elsewhere / f"{name}.py").write_text("async def handle(delivery):\n    return None\n")
    modules.names.append(name)
    with pytest.raises(ValidationError, match="--import-path"):
        import_handler(f"{name}:handle")
    import_handler(f"{name}:handle", import_paths=[elsewhere, str(elsewhere)])
    assert sys.path[0] == str(elsewhere)
    assert sys.path.count(str(elsewhere)) == 1


@pytest.mark.parametrize(
    ("source", "attr", "words"),
    [
        (None, "x", "is not a handler: use package.module:function"),
        ("async def handle(d):\n    return None\n", "nothere", "has no attribute 'nothere'"),
        ("def handle(d):\n    return None\n", "handle", "is not an async callable"),
        ("class Handle:\n    async def __call__(self, d): ...\n", "Handle", "not an async"),
        ("raise RuntimeError('boom')\n", "handle", "RuntimeError: boom (at "),
        ("def broken(:\n", "handle", "SyntaxError"),
        ("import no_such_dependency_xyz\n", "handle", "importing"),
        ("async def handle(d): ...\nCAPABILITIES = 'one'\n", "handle", "must be a list"),
        ("async def handle(d): ...\nCAPABILITIES = [1]\n", "handle", "neither a Capability"),
        ("async def handle(d): ...\nCAPABILITIES = ['a b']\n", "handle", "not a capability"),
    ],
)
def test_import_handler_refuses_bad_specs_in_one_line(
    modules: Modules, source: str | None, attr: str, words: str
) -> None:
    spec = "no colon" if source is None else f"{modules.write(source)}:{attr}"
    with pytest.raises(ValidationError) as caught:
        import_handler(spec)
    assert words in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_a_missing_module_says_where_it_looked() -> None:
    with pytest.raises(ValidationError) as caught:
        import_handler("no_such_package_xyz.tasks:handle")
    assert str(caught.value).startswith("no module named 'no_such_package_xyz'")


def test_declared_capabilities_of_a_plain_callable() -> None:
    async def handle(delivery: Delivery) -> None:
        return None

    assert declared_capabilities(handle) == ()  # this test module declares none

    async def nowhere(delivery: Delivery) -> None:
        return None

    nowhere.__module__ = "not_imported_anywhere"
    assert declared_capabilities(nowhere) == ()


def test_default_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "_my host!.example")
    assert default_instance() == f"my-host-.example-{os.getpid()}"
    assert AgentId("t", default_instance()).instance == default_instance()
    monkeypatch.setattr("socket.gethostname", lambda: "___")
    assert default_instance() == f"pid-{os.getpid()}"


# -- the Worker in-process -----------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


async def noop(delivery: Delivery) -> None:
    return None


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"grace": -1}, "grace"),
        ({"visibility_timeout": 0}, "visibility_timeout"),
        ({"handler_timeout": 0}, "handler_timeout"),
        ({"ttl": 0}, "ttl"),
        ({"heartbeat_interval": 0}, "heartbeat_interval"),
        ({"ttl": 3, "heartbeat_interval": 3}, "must be shorter than ttl"),
    ],
)
@pytest.mark.anyio
async def test_worker_refuses_bad_options(
    backend: Backend, options: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        Worker(backend, noop, AGENT, **options)


@pytest.mark.anyio
async def test_worker_identity_and_queues(backend: Backend) -> None:
    worker = Worker(backend, noop, SHARED, also_shared=False)
    assert worker.agent_id == AgentId("svc", default_instance())
    assert worker.queues == (worker.agent_id,)
    both = Worker(backend, noop, AGENT, capabilities=[Capability("x")])
    assert both.queues == (AGENT, SHARED)
    assert both.capabilities == (Capability("x"),)
    assert (both.running, both.stopping) == (0, False)


@pytest.mark.anyio
async def test_worker_serves_both_queues_registered_and_stops_gracefully(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tta_agent_coordination.worker")
    metrics = RecordingMetrics()
    registry = AgentRegistry(backend)
    seen: list[Any] = []
    two_done = anyio.Event()

    async def handle(delivery: Delivery) -> None:
        seen.append(delivery.message.payload)
        if len(seen) == 3:
            two_done.set()
        if delivery.message.payload == {"fail": True}:
            raise RuntimeError("handler failed")

    worker = Worker(
        backend,
        handle,
        AGENT,
        concurrency=2,
        capabilities=[Capability("summarise", "1.2")],
        metadata={"team": "a"},
        metrics=metrics,
        retry_policy=RetryPolicy(max_attempts=1),  # the failure is dead-lettered at once
    )
    outcome: list[Any] = []
    async with anyio.create_task_group() as tg:

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            outcome.append(await worker.run(task_status=task_status))

        await tg.start(run)  # registered, then serving
        info = await registry.get(AGENT)
        assert info is not None
        assert info.capabilities == (Capability("summarise", "1.2"),)
        assert info.metadata["team"] == "a"
        assert info.metadata["pid"] == os.getpid()
        assert str(info.metadata["handler"]).endswith(".<locals>.handle")
        sends: list[tuple[AgentId, JsonValue]] = [
            (AGENT, {"to": "own"}),
            (SHARED, {"to": "shared"}),
        ]
        for to, payload in sends:
            await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=to, payload=payload))
        await backend.queue.enqueue(
            AgentMessage(sender=SHARED, recipient=AGENT, payload={"fail": True})
        )
        with anyio.fail_after(5):
            await two_done.wait()
        worker.stop()
        worker.stop()  # a no-op once stopping
        assert worker.stopping
    (result,) = outcome
    assert result.reason is StopReason.STOPPED
    assert result.signal is None
    assert (result.succeeded, result.failed, result.cancelled, result.handled) == (2, 1, 0, 3)
    assert await registry.get(AGENT) is None  # deregistered
    assert metrics.gauges  # the running gauge was reported
    assert all(k[0] == WORKER_HANDLERS_RUNNING for k in metrics.gauges)
    assert "ready: serving svc:w1 and svc with concurrency 2" in caplog.text
    assert "stopped (stopped): 3 handled, 2 succeeded, 1 failed, 0 cancelled" in caplog.text
    with pytest.raises(RuntimeError, match="runs once"):
        await worker.run()


@pytest.mark.anyio
async def test_stop_lets_the_running_handler_finish_then_abort_stops_at_once(
    backend: Backend,
) -> None:
    running = anyio.Event()

    async def handle(delivery: Delivery) -> None:
        running.set()
        await anyio.sleep_forever()

    worker = Worker(backend, handle, AGENT, grace=60, visibility_timeout=0.5)
    await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT))
    result: list[Any] = []
    with anyio.fail_after(5):  # far below the grace period
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                result.append(await worker.run())

            tg.start_soon(run)
            await running.wait()
            worker.stop()
            await anyio.wait_all_tasks_blocked()
            assert worker.running == 1  # still running, within its grace
            worker.abort()
            worker.abort()  # a no-op once aborting
    (outcome,) = result
    assert outcome.reason is StopReason.ABORTED
    assert outcome.cancelled == 1
    stats = await backend.queue.stats(AGENT)
    assert (stats.ready, stats.reserved) == (0, 1)  # left reserved, not released


@pytest.mark.anyio
async def test_signals_first_stops_second_aborts(backend: Backend) -> None:
    running = anyio.Event()

    async def handle(delivery: Delivery) -> None:
        running.set()
        await anyio.sleep_forever()

    worker = Worker(backend, handle, AGENT, grace=60)
    await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT))
    result: list[Any] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                result.append(await worker.run(signals=[signal.SIGTERM], task_status=task_status))

            await tg.start(run)
            await running.wait()
            os.kill(os.getpid(), signal.SIGTERM)
            await worker._stop.wait()
            os.kill(os.getpid(), signal.SIGTERM)
    (outcome,) = result
    assert outcome.reason is StopReason.ABORTED
    assert outcome.signal is signal.SIGTERM


@pytest.mark.anyio
async def test_a_lost_registration_stops_the_worker(backend: Backend) -> None:
    registry = AgentRegistry(backend)
    worker = Worker(backend, noop, AGENT, ttl=5, heartbeat_interval=0.02)
    result: list[Any] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:

            async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
                result.append(await worker.run(task_status=task_status))

            await tg.start(run)
            await registry.register(AGENT, replace=True)  # another process takes the id
    (outcome,) = result
    assert outcome.reason is StopReason.LOST


@pytest.mark.anyio
async def test_load_is_reported_while_handlers_run(backend: Backend) -> None:
    registry = AgentRegistry(backend)
    cursor = (await registry.read_events()).next_cursor
    running = anyio.Event()
    finish = anyio.Event()

    async def handle(delivery: Delivery) -> None:
        running.set()
        await finish.wait()

    worker = Worker(backend, handle, AGENT, concurrency=2, heartbeat_interval=0.02)
    loads: list[float] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=SHARED))
            await running.wait()
            async with aclosing(registry.events(after=cursor)) as events:
                async for event in events:
                    if event.kind is RegistryEventKind.UPDATED and event.agent_id == AGENT:
                        assert event.agent is not None
                        loads.append(event.agent.load)
                        if event.agent.load == 0.5:
                            break
            finish.set()
            worker.stop()
    assert loads[-1] == 0.5


@pytest.mark.anyio
async def test_load_reports_survive_a_failing_store_and_skip_unchanged_loads(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.registry
    token = await store.register(AGENT)
    info = await store.heartbeat(AGENT, token)
    real_heartbeat = store.heartbeat
    worker = Worker(backend, noop, AGENT, heartbeat_interval=0.01)
    loads: list[float | None] = []

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        loads.append(kwargs.get("load"))
        if len(loads) == 2:  # the second report gets through
            return await real_heartbeat(*args, **kwargs)
        raise BackendUnavailableError("store down")

    class Ticks(Registration):
        """Counts the watcher's ticks after the load was reported; stops it at the second."""

        after_report = 0

        @property
        def lost(self) -> None:
            if len(loads) == 2:
                self.after_report += 1
                if self.after_report == 2:  # a tick with nothing to report went by
                    worker.stop()
            return None

        @lost.setter
        def lost(self, value: object) -> None:  # pyright: ignore[reportIncompatibleVariableOverride]
            return None

    monkeypatch.setattr(store, "heartbeat", flaky)
    worker._running = 1  # a load to report
    with anyio.fail_after(5):
        await worker._watch_registration(
            Ticks(store, AGENT, token, info, 0.01), anyio.CancelScope()
        )
    # failed, reported, (a tick reporting nothing), then unavailable on stopping (failed)
    assert loads == [1.0, 1.0, None]
    assert "reporting the load of svc:w1 failed: store down" in caplog.text
    assert "marking svc:w1 unavailable failed: store down" in caplog.text


@pytest.mark.anyio
async def test_a_conflicting_registration_fails_the_run(backend: Backend) -> None:
    await AgentRegistry(backend).register(AGENT)
    with pytest.raises(AgentConflictError):
        await Worker(backend, noop, AGENT).run()


@pytest.mark.anyio
async def test_run_worker_from_strings(modules: Modules) -> None:
    url = f"memory://worker-{uuid.uuid4().hex[:10]}"
    name = modules.write(
        """
        import os, signal
        CAPABILITIES = ["summarise@1", "translate@1"]
        async def handle(delivery):
            os.kill(os.getpid(), signal.SIGINT)
        """
    )
    async with connect(url) as backend:
        await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT))
        with anyio.fail_after(5):
            outcome = await run_worker(
                url, f"{name}:handle", "svc:w1", capabilities=["translate@2"]
            )
        assert (outcome.reason, outcome.signal, outcome.succeeded) == (
            StopReason.STOPPED,
            signal.SIGINT,
            1,
        )
        assert (await backend.queue.stats(AGENT)).reserved == 0


@pytest.mark.anyio
async def test_run_worker_merges_declared_capabilities(backend: Backend) -> None:
    seen: list[tuple[Capability, ...]] = []

    async def handle(delivery: Delivery) -> None:
        info = await AgentRegistry(backend).get(AGENT)
        assert info is not None
        seen.append(info.capabilities)
        os.kill(os.getpid(), signal.SIGTERM)

    handle.capabilities = ["a@1", "b@1"]  # type: ignore[attr-defined]
    imported = ImportedHandler("x:handle", handle, (Capability("c"),))
    with anyio.fail_after(5):
        # One message per run: the handler's signal stops the run that handled it.
        await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT))
        await run_worker(backend, handle, AGENT, capabilities=[Capability("b", "2")])
        await backend.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT))
        await run_worker(backend, imported, AGENT)
    assert seen == [
        (Capability("a", "1"), Capability("b", "2")),
        (Capability("c"),),
    ]


# -- tta-coord worker through the runner ---------------------------------------------------


class Cli:
    def __init__(self, url: str, backend: Backend) -> None:
        self.url = url
        self.backend = backend
        self.runner = CliRunner()

    def worker(self, *args: str) -> Result:
        return self.runner.invoke(app, ["--url", self.url, "worker", *args])

    def do(self, action: Callable[[Backend], Any]) -> Any:
        async def go() -> Any:
            return await action(self.backend)

        return anyio.run(go)


@pytest.fixture
def cli() -> Iterator[Cli]:
    url = f"memory://worker-{uuid.uuid4().hex[:10]}"
    backend = connect(url)
    yield Cli(url, backend)
    anyio.run(backend.aclose)


def one_error_line(result: Result) -> str:
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("tta-coord: error:")]
    return line


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["nocolon", "--agent", "svc"], "'nocolon' is not a handler"),
        (["no_such_module_xyz:h", "--agent", "svc"], "no module named 'no_such_module_xyz'"),
        (["{module}:h", "--agent", "bad id"], "'bad id' is not an agent id"),
        (["{module}:h", "--agent", "svc", "--capability", "a b"], "'a b' is not a capability"),
        (["{module}:missing", "--agent", "svc"], "has no attribute 'missing'"),
        (["{module}:sync", "--agent", "svc"], "is not an async callable"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(
    cli: Cli, modules: Modules, args: list[str], words: str
) -> None:
    module = modules.write("async def h(d): ...\ndef sync(d): ...\n")
    result = cli.worker(*[a.format(module=module) for a in args])
    assert result.exit_code == 2, result.output
    assert words in one_error_line(result)


def test_cli_usage_errors_and_help(cli: Cli) -> None:
    missing_agent = cli.worker("m:h")
    assert missing_agent.exit_code == 2
    assert "--agent" in missing_agent.stderr
    zero = cli.worker("m:h", "--agent", "svc", "--concurrency", "0")
    assert zero.exit_code == 2
    helped = cli.runner.invoke(app, ["worker", "--help"])
    assert helped.exit_code == 0
    for words in ("--grace", "--visibility", "--import-path", "--heartbeat", "130"):
        assert words in helped.output


def test_cli_serves_until_sigterm_and_exits_0(cli: Cli, modules: Modules, tmp_path: Path) -> None:
    elsewhere = tmp_path / "src"
    elsewhere.mkdir()
    name = f"tasks_{uuid.uuid4().hex[:10]}"
    (elsewhere / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import os, signal
            CAPABILITIES = ["summarise@1.2"]
            async def handle(delivery):
                os.kill(os.getpid(), signal.SIGTERM)
            """
        )
    )
    modules.names.append(name)
    cli.do(lambda b: b.queue.enqueue(AgentMessage(sender=SHARED, recipient=SHARED)))
    result = cli.worker(
        f"{name}:handle",
        "--agent",
        "svc:w1",
        "--concurrency",
        "3",
        "--capability",
        "translate@2:en",
        "--import-path",
        str(elsewhere),
        "--grace",
        "5",
        "--log-level",
        "debug",
    )
    assert result.exit_code == 0, result.output
    assert (
        "worker svc:w1 ready: serving svc:w1 and svc with concurrency 3; "
        f"handler {name}:handle; capabilities: summarise 1.2, translate 2" in result.stderr
    )
    assert "worker svc:w1 stopping on SIGTERM" in result.stderr
    assert "stopped (stopped): 1 handled, 1 succeeded" in result.stderr
    stats = cli.do(lambda b: b.queue.stats(SHARED))
    assert (stats.ready, stats.reserved) == (0, 0)
    assert cli.do(lambda b: b.registry.get(AGENT)) is None


@pytest.mark.parametrize(("flags", "frozen"), [((), True), (("--no-gc-freeze",), False)])
def test_cli_freezes_what_is_loaded_for_the_collector(
    cli: Cli, modules: Modules, tmp_path: Path, flags: tuple[str, ...], frozen: bool
) -> None:
    seen = tmp_path / "frozen"
    name = modules.write(
        f"""
        import gc, os, signal
        async def handle(delivery):
            with open({str(seen)!r}, "w") as out:
                out.write(str(gc.get_freeze_count()))
            os.kill(os.getpid(), signal.SIGTERM)
        """
    )
    gc.unfreeze()  # (an earlier run left the test process frozen: start from none of ours)
    before = gc.get_freeze_count()
    cli.do(lambda b: b.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT)))
    result = cli.worker(f"{name}:handle", "--agent", "svc:w1", "--no-shared", *flags)
    assert result.exit_code == 0, result.output
    during = int(seen.read_text())
    # Frozen: everything loaded (thousands of objects: modules, the handler's); else none.
    assert during > before + 1000 if frozen else during == before


def test_cli_second_sigint_stops_at_once_with_130(cli: Cli, modules: Modules) -> None:
    name = modules.write(
        """
        import os, signal, anyio
        async def handle(delivery):
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep(0)
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep_forever()
        """
    )
    cli.do(lambda b: b.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT)))
    result = cli.worker(f"{name}:handle", "--agent", "svc:w1", "--grace", "60", "--no-shared")
    assert result.exit_code == 130, result.output
    assert "serving svc:w1 with concurrency 1" in result.stderr
    assert "stopping at once on a second SIGINT" in result.stderr
    assert cli.do(lambda b: b.queue.stats(AGENT)).reserved == 1


def test_cli_conflict_is_exit_1_and_lost_registration_is_exit_1(cli: Cli, modules: Modules) -> None:
    token = cli.do(lambda b: b.registry.register(AGENT))
    conflict = cli.worker(f"{modules.write('async def h(d): ...')}:h", "--agent", "svc:w1")
    assert conflict.exit_code == 1
    assert "svc:w1" in one_error_line(conflict)
    name = modules.write(
        f"""
        from tta_agent_coordination import AgentId, connect
        async def handle(delivery):
            async with connect({cli.url!r}) as backend:
                await backend.registry.register(AgentId("svc", "w1"), replace=True)
        """
    )
    assert token
    cli.do(lambda b: b.queue.enqueue(AgentMessage(sender=SHARED, recipient=AGENT)))
    lost = cli.worker(f"{name}:handle", "--agent", "svc:w1", "--replace", "--heartbeat", "0.02")
    assert lost.exit_code == 1, lost.output
    assert "lost its registration" in lost.stderr
