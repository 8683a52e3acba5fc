"""The PostgreSQL TLS context: what each sslmode checks, and the client certificate."""

from __future__ import annotations

import dataclasses
import ssl
import subprocess
from pathlib import Path

import pytest
from shield_orchestrator.deployed import BOUNDS, DEFAULTS
from shield_orchestrator.jobs.history import ssl_context
from shield_orchestrator.settings import Settings

BASE = Settings.load({}, DEFAULTS, BOUNDS)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and a client certificate signed by it (openssl, as an operator would)."""
    root = tmp_path_factory.mktemp("pki")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=root, check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    )
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=orch")
    openssl(
        "x509",
        "-req",
        "-in",
        "client.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "client.crt",
        "-days",
        "2",
    )
    return root


def context(**changes: str) -> ssl.SSLContext | bool:
    return ssl_context(dataclasses.replace(BASE, **changes))


def test_disable_means_no_tls() -> None:
    assert context(postgres_sslmode="disable") is False


def test_require_encrypts_without_checking() -> None:
    ctx = context(postgres_sslmode="require")
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_verify_ca_checks_the_chain_only(pki: Path) -> None:
    ctx = context(postgres_sslmode="verify-ca", postgres_sslrootcert=str(pki / "ca.crt"))
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and not ctx.check_hostname
    assert len(ctx.get_ca_certs()) == 1


def test_verify_full_checks_chain_and_host_with_a_client_certificate(pki: Path) -> None:
    ctx = context(
        postgres_sslmode="verify-full",
        postgres_sslrootcert=str(pki / "ca.crt"),
        postgres_sslcert=str(pki / "client.crt"),
        postgres_sslkey=str(pki / "client.key"),
    )
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert [cert["subject"] for cert in ctx.get_ca_certs()]


def test_a_key_that_does_not_match_is_refused(pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        context(
            postgres_sslmode="verify-full",
            postgres_sslrootcert=str(pki / "ca.crt"),
            postgres_sslcert=str(pki / "client.crt"),
            postgres_sslkey=str(pki / "ca.key"),
        )
