"""TLS and ACL against a real redis-server started by the tests (issue 6, item 8).

The certificates come from ``trustme`` (a throw-away CA made for the session); the server
requires TLS on its only port and knows one user, created by the tests, whose ACL allows only
keys that start with the test namespaces. The queue contract runs unchanged over that
connection, as that user.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis as sync_redis

from redis_helpers import Servers
from tta_agent_coordination import connect
from tta_agent_coordination.errors import BackendError, BackendUnavailableError
from tta_agent_coordination.models import AgentId, AgentMessage
from tta_agent_coordination.testing.queue_contract import QueueContract
from tta_agent_coordination_redis import RedisBackend

trustme = pytest.importorskip("trustme", reason="the TLS tests need trustme (a test dependency)")

USER, PASSWORD = "tta-tester", "s3cret-pw"
QUEUE = AgentId("tls", "q")


class TlsServer:
    def __init__(self, port: int, ca_file: Path, admin_password: str) -> None:
        self.port = port
        self.ca_file = ca_file
        self.admin_password = admin_password

    def url(self, user: str = USER, password: str = PASSWORD, **query: str) -> str:
        params = "&".join(
            f"{k}={quote(v)}" for k, v in {"ssl_ca_certs": str(self.ca_file), **query}.items()
        )
        return f"rediss://{user}:{password}@127.0.0.1:{self.port}/0?{params}"


@pytest.fixture(scope="module")
def tls_server(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> TlsServer:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    home = tmp_path_factory.mktemp("tls")
    ca_file, cert_file, key_file = home / "ca.pem", home / "server.pem", home / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    admin_password = uuid.uuid4().hex
    port = servers.start_tls(
        "--tls-cert-file", str(cert_file),
        "--tls-key-file", str(key_file),
        "--tls-ca-cert-file", str(ca_file),
        "--tls-auth-clients", "no",
        "--requirepass", admin_password,
        ca_file=ca_file,
    )  # fmt: skip
    with sync_redis.Redis(
        port=port, ssl=True, ssl_ca_certs=str(ca_file), password=admin_password
    ) as admin:
        # only keys of namespaces that start with "t" (the contract's) or "app"
        admin.acl_setuser(
            USER,
            enabled=True,
            passwords=[f"+{PASSWORD}"],
            keys=["t*", "app:*"],
            channels=["*"],
            commands=["+@all", "-@admin", "-@dangerous"],
        )
    return TlsServer(port, ca_file, admin_password)


class TestRedisTlsAclQueue(QueueContract):
    url = "rediss://"  # the server's address is known only once it runs: see below

    @pytest.fixture(autouse=True)
    def backend_url(self, tls_server: TlsServer) -> str:
        """TLS, as the ACL user (overrides the class's ``url``)."""
        self.target_url = tls_server.url()
        return self.target_url


@pytest.mark.anyio
async def test_a_user_limited_to_the_namespace_can_do_everything_in_it(
    tls_server: TlsServer,
) -> None:
    async with connect(tls_server.url(), namespace="app") as backend:
        assert isinstance(backend, RedisBackend)
        assert "tls" in backend.capabilities
        assert PASSWORD not in backend.url
        try:
            sent = AgentMessage(sender=QUEUE, recipient=QUEUE)
            await backend.queue.enqueue(sent)
            (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=10)
            assert delivery.message == sent
            assert await backend.queue.ack(delivery.receipt)
            assert await backend.queue.queues() == [QUEUE]
        finally:
            await backend.drop_namespace()


@pytest.mark.anyio
async def test_the_acl_really_limits_the_user_to_those_namespaces(tls_server: TlsServer) -> None:
    async with connect(tls_server.url(), namespace="zzz") as backend:
        with pytest.raises(BackendError, match=r"NOPERM|no permissions"):
            await backend.queue.enqueue(AgentMessage(sender=QUEUE, recipient=QUEUE))


@pytest.mark.anyio
async def test_wrong_credentials_or_an_untrusted_server_are_unavailable(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    wrong = tls_server.url(password="wrong")  # noqa: S106  # a wrong password on purpose
    async with connect(wrong, namespace="app") as backend:
        with pytest.raises(BackendUnavailableError, match="refused"):
            await backend.queue.stats(QUEUE)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    url = tls_server.url(ssl_ca_certs=str(other_ca), socket_connect_timeout="2")
    async with connect(url, namespace="app") as backend:
        with pytest.raises(BackendUnavailableError):
            await backend.queue.stats(QUEUE)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
