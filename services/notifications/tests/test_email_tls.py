"""The email channel over TLS with a login, against a real aiosmtpd server.

A certificate authority and a server certificate for 127.0.0.1 are made here with
`cryptography`; the channel trusts that CA through `ca_file`. STARTTLS and implicit TLS
each deliver with the right login; a wrong password is refused by the server (535) and
is a permanent error (retrying cannot fix a credential); a server whose certificate the
channel cannot verify gets nothing, not even the login.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import SecretStr

from keelson_dev.embedded import free_port
from notifications_service.channels import DeliveryError, OutgoingMessage
from notifications_service.channels.email import SmtpEmail
from notifications_service.settings import EmailSettings, SmtpSecurity

USER, PASSWORD = "relay-user", "relay-password-0123"


@dataclass
class Pki:
    ca_file: Path
    server_context: ssl.SSLContext


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("Keelson test CA"))
        .issuer_name(_name("Keelson test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return Pki(folder / "ca.pem", context)


@dataclass
class Mailbox:
    """What the server accepted, and the logins it was offered."""

    received: list[tuple[list[str], bytes]] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.received.append((list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        login = auth_data.login.decode()
        ok = (login, auth_data.password.decode()) == (USER, PASSWORD)
        with self.lock:
            self.logins.append((login, ok))
        return AuthResult(success=ok, handled=False)  # the server answers 235 or 535


def _server(pki: Pki, mailbox: Mailbox, *, implicit: bool) -> Controller:
    options: dict[str, Any] = {"authenticator": mailbox.authenticate}
    if implicit:
        options.update(ssl_context=pki.server_context, auth_require_tls=False)
    else:
        options.update(tls_context=pki.server_context, require_starttls=True)
    return Controller(mailbox, hostname="127.0.0.1", port=free_port(), **options)


@pytest.fixture(params=["starttls", "tls"])
def tls_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[tuple[Controller, Mailbox]]:
    mailbox = Mailbox()
    controller = _server(pki, mailbox, implicit=request.param == "tls")
    controller.start()
    yield controller, mailbox
    controller.stop()


def _channel(controller: Controller, **options: Any) -> SmtpEmail:
    implicit = controller.ssl_context is not None
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": controller.port,
        "security": SmtpSecurity.TLS if implicit else SmtpSecurity.STARTTLS,
        "username": USER,
        "password": SecretStr(PASSWORD),
        "timeout_seconds": 10,
        "connections": 1,
    }
    return SmtpEmail(EmailSettings(**(values | options)))


def _message(to: str) -> OutgoingMessage:
    return OutgoingMessage(
        id=str(uuid.uuid4()),
        recipient=to,
        subject="Over TLS",
        text="sealed in transit",
        html="<p>sealed in transit</p>",
        transactional=True,
    )


async def test_a_mail_is_delivered_over_tls_after_logging_in(
    tls_server: tuple[Controller, Mailbox], pki: Pki
) -> None:
    controller, mailbox = tls_server
    channel = _channel(controller, ca_file=str(pki.ca_file))
    try:
        assert await channel.send(_message("first@example.com")) == 250
        assert await channel.send(_message("second@example.com")) == 250  # the kept session
    finally:
        await channel.close()

    assert [to for to, _ in mailbox.received] == [["first@example.com"], ["second@example.com"]]
    assert b"Subject: Over TLS" in mailbox.received[0][1]
    assert mailbox.logins == [(USER, True)], "one login, the session reused"


async def test_a_wrong_password_is_refused_and_is_a_permanent_error(
    tls_server: tuple[Controller, Mailbox], pki: Pki
) -> None:
    controller, mailbox = tls_server
    channel = _channel(controller, ca_file=str(pki.ca_file), password=SecretStr("wrong"))
    try:
        with pytest.raises(DeliveryError) as refused:
            await channel.send(_message("nobody@example.com"))
    finally:
        await channel.close()

    assert refused.value.permanent is True
    assert refused.value.code == 535
    assert "wrong" not in refused.value.detail and PASSWORD not in refused.value.detail
    assert mailbox.logins and all(login == (USER, False) for login in mailbox.logins)
    assert mailbox.received == []


async def test_a_server_certificate_that_cannot_be_verified_gets_no_login_and_no_mail(
    tls_server: tuple[Controller, Mailbox],
) -> None:
    controller, mailbox = tls_server
    channel = _channel(controller)  # the system's CAs: the test CA is not among them
    try:
        with pytest.raises(DeliveryError) as failed:
            await channel.send(_message("nobody@example.com"))
    finally:
        await channel.close()

    assert failed.value.permanent is False  # the certificate may be fixed; retried later
    assert mailbox.logins == [] and mailbox.received == []
