"""The Kubernetes engine (dask-kubernetes' operator): option checking and the rendered
``DaskCluster`` resource. No Kubernetes cluster is available here, so nothing is applied: the
one test of ``make_cluster`` replaces KubeCluster with a recorder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from fedcompute.endpoint.engines import ENGINES, get_engine
from fedcompute.endpoint.engines import kubernetes as k8s

TEMPLATE = Path(k8s.__file__).parents[1] / "templates" / "kubernetes.yaml"


def engine(tmp_path: Path, **options):
    return get_engine({"type": "kubernetes", **options}, tmp_path / "My_Lab.EP")


def worker_container(spec: dict) -> dict:
    return spec["spec"]["worker"]["spec"]["containers"][0]


def test_registered_and_template_is_valid(tmp_path):
    assert ENGINES["kubernetes"].endswith(":KubernetesEngine")
    options = yaml.safe_load(TEMPLATE.read_text())["engine"]
    spec = get_engine(options, tmp_path / "ep").spec
    assert spec["kind"] == "DaskCluster" and worker_container(spec)["image"]


@pytest.mark.parametrize(("options", "message"), [
    ({"imag": "x"}, "unknown option 'imag'; did you mean 'image'"),
    ({"namepsace": "x"}, "did you mean 'namespace'"),
    ({"n_workers": 3}, "use min_workers / max_workers"),
    ({"min_workers": 3, "max_workers": 2}, r"min_workers \(3\) > max_workers \(2\)"),
    ({"max_workers": -1}, "max_workers must be an integer >= 0"),
    ({"resources": ["cpu"]}, "resources must be a mapping"),
    ({"mpi_launcher": "mpiexe"}, "did you mean 'mpiexec'"),
    ({"worker_resources": {"GPU": "x"}}, "GPU"),
])
def test_bad_options_are_refused(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        engine(tmp_path, **options)


def test_rendered_cluster_spec(tmp_path):
    spec = engine(tmp_path, image="registry.example.org/fc:1", namespace="science",
                  resources={"requests": {"cpu": "2", "memory": "4Gi"}},
                  env={"FOO": "bar"}, min_workers=1, max_workers=5,
                  worker_resources={"GPU": 1}, mpi_launcher="mpiexec").spec
    assert spec["metadata"]["name"] == "fedcompute-my-lab-ep"  # DNS-1123
    worker = worker_container(spec)
    assert worker["image"] == "registry.example.org/fc:1"
    assert worker["args"][:4] == ["dask", "worker", "--resources", "GPU=1"]
    assert worker["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}}
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert env["FOO"] == "bar" and env["FEDCOMPUTE_MPI_LAUNCHER"] == "mpiexec"
    assert env["DASK_DISTRIBUTED__WORKER__DAEMON"] == "False"
    assert spec["spec"]["worker"]["replicas"] == 1
    scheduler = spec["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler["image"] == "registry.example.org/fc:1"


def test_job_script_prints_the_resource_as_plain_yaml(tmp_path):
    text = engine(tmp_path, image="img:1").job_script()
    assert "&id" not in text and "*id" not in text  # no YAML aliases for kubectl readers
    assert yaml.safe_load(text)["apiVersion"] == "kubernetes.dask.org/v1"


def test_custom_cluster_spec_file(tmp_path):
    custom = engine(tmp_path, image="base:1").spec
    custom["metadata"]["name"] = "mine"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(custom))
    spec = engine(tmp_path, custom_cluster_spec=str(path)).spec
    assert spec["metadata"]["name"] == "mine" and worker_container(spec)["image"] == "base:1"
    path.write_text(yaml.safe_dump({"kind": "DaskCluster", "spec": {}}))
    with pytest.raises(ValueError, match="spec.worker.spec.containers"):
        engine(tmp_path, custom_cluster_spec=str(path))


def test_endpoint_container_is_refused(tmp_path):
    with pytest.raises(ValueError, match="set engine: {image: ...}"):
        get_engine({"type": "kubernetes"}, tmp_path, container={"type": "podman",
                                                                "image": "x"})


def test_make_cluster_hands_the_spec_to_kubecluster(tmp_path, monkeypatch):
    made = {}

    class Recorder:
        def __init__(self, **kwargs):
            made["kwargs"] = kwargs

        def adapt(self, minimum, maximum):
            made["adapt"] = (minimum, maximum)

    monkeypatch.setattr(k8s, "new_kube_cluster", Recorder)
    eng = engine(tmp_path, image="img:1", namespace="lab", resource_timeout=60, max_workers=3)
    eng.make_cluster()
    assert made["kwargs"] == {"custom_cluster_spec": eng.spec, "shutdown_on_close": True,
                              "namespace": "lab", "resource_timeout": 60}
    assert made["adapt"] == (0, 3)


def test_cobalt_points_to_pbs(tmp_path):
    with pytest.raises(ValueError, match=r"Cobalt was retired.*ALCF.*PBS.*type 'pbs'"):
        get_engine({"type": "cobalt", "queue": "debug"}, tmp_path)


def test_configure_and_job_script_cli(tmp_path, monkeypatch):
    from fedcompute.endpoint.cli import endpoint

    monkeypatch.setenv("FEDCOMPUTE_HOME", str(tmp_path))
    runner = CliRunner()
    done = runner.invoke(endpoint, ["configure", "kube", "--engine", "kubernetes"])
    assert done.exit_code == 0, done.output
    done = runner.invoke(endpoint, ["job-script", "kube"])
    assert done.exit_code == 0, done.output
    assert yaml.safe_load(done.output)["metadata"]["name"] == "fedcompute-kube"
