"""TLS: a service started with ``--certfile/--keyfile`` serves HTTPS; the SDK and the endpoint
verify certificates by default (a self-signed one is refused) and accept it when given as the
CA (``Client(verify=path)``, ``verify_tls: path``); tasks run end to end over HTTPS."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import sys

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fedcompute import Client, Executor
from fedcompute.errors import ServiceError
from fedcompute.testing import LocalStack

pytestmark = pytest.mark.timeout(300)


def self_signed(directory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 / localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    home = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(home)
    stack = LocalStack(home, workers=1)
    log = open(home / "service.out", "ab")  # noqa: SIM115
    stack.service = subprocess.Popen(
        [sys.executable, "-m", "fedcompute.cli", "service", "start", "--port", "0",
         "--certfile", cert, "--keyfile", key],
        env=stack.env, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    log.close()
    try:
        stack.service_url = json.loads(stack.service.stdout.readline())["url"]
        stack.token = stack.create_user("alice")
        yield stack, cert
    finally:
        stack.down()


def test_service_speaks_https_only(tls):
    stack, _ = tls
    assert stack.service_url.startswith("https://127.0.0.1:")
    with pytest.raises(httpx.HTTPError):
        httpx.get(stack.service_url.replace("https", "http", 1) + "/v1/version", timeout=10)


def test_sdk_verifies_certificates_by_default(tls):
    stack, cert = tls
    with pytest.raises(ServiceError, match="CERTIFICATE_VERIFY_FAILED") as info:
        Client(stack.service_url, stack.token, retries=0).whoami()
    assert info.value.status == 0
    assert Client(stack.service_url, stack.token, verify=cert).whoami()["name"] == "alice"


def double(x):
    return 2 * x


def test_endpoint_verifies_and_tasks_run_over_https(tls):
    stack, cert = tls
    # An endpoint with the default verification refuses the self-signed service.
    with pytest.raises(RuntimeError, match="CERTIFICATE_VERIFY_FAILED"):
        stack.start_endpoint("trusting-nobody", timeout=60)
    endpoint_id = stack.start_endpoint("tls", verify_tls=cert)
    client = Client(stack.service_url, stack.token, verify=cert)
    with Executor(endpoint_id, client=client) as ex:
        assert list(ex.map(double, range(20), timeout=120)) == [2 * i for i in range(20)]
