"""``feds://``: the relay over TLS, with a service on HTTPS (self-signed CA given as ``verify``)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
from distributed import Client, LocalCluster
from fedcompute import Client as FedClient
from fedcompute.endpoint.dask_bridge import DaskBridge
from fedcompute.plugins.dask import FederatedCluster

pytestmark = pytest.mark.timeout(180)


def _self_signed(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


@pytest.fixture(scope="module")
def tls_service(tmp_path_factory):
    home = tmp_path_factory.mktemp("fedcompute-tls")
    certfile, keyfile = _self_signed(home)
    env = {**os.environ, "FEDCOMPUTE_HOME": str(home)}
    env.pop("FEDCOMPUTE_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedcompute.cli", "service", "start", "--port", "0",
         "--certfile", certfile, "--keyfile", keyfile],
        env=env, stdout=subprocess.PIPE, stderr=open(home / "service.out", "wb"),  # noqa: SIM115
        start_new_session=True)
    try:
        url = json.loads(proc.stdout.readline())["url"]
        token = subprocess.run([sys.executable, "-m", "fedcompute.cli", "user", "create",
                                "alice"], env=env, capture_output=True, text=True,
                               check=True).stdout.strip()
        yield SimpleNamespace(url=url, token=token, ca=certfile)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_feds_end_to_end(tls_service):
    assert tls_service.url.startswith("https://")
    fed = FedClient(tls_service.url, tls_service.token, verify=tls_service.ca)
    reg = fed.request("POST", "/endpoints", body={"name": "tls"})
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=2,
                      dashboard_address=None) as local:
        bridge = DaskBridge(tls_service.url, reg["credential"], reg["endpoint_id"],
                            SimpleNamespace(cluster=local), verify=tls_service.ca).start()
        try:
            assert bridge.wait_connected(30)
            with FederatedCluster(reg["endpoint_id"], fed, verify=tls_service.ca) as cluster:
                assert cluster.scheduler_address.startswith("feds://")
                with Client(cluster) as client:
                    assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
                    payload = os.urandom(9 * 2**20)  # more than one 8 MiB shard
                    assert client.gather(client.scatter(payload)) == payload
            # Without the CA, the certificate is refused: the connection fails, no fallback.
            with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED|certificate"):
                Client(cluster.scheduler_address, timeout=5,
                       security=_bearer(tls_service.token))
        finally:
            bridge.stop()


def _bearer(token):
    from distributed.security import Security

    return Security(extra_conn_args={"headers": {"Authorization": f"Bearer {token}"}})
