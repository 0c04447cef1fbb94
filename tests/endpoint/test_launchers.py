"""MPI launcher prefixes (endpoint/launchers.py): pure functions, and the node pool."""

from __future__ import annotations

import threading

import pytest
from fedcompute.endpoint import launchers
from fedcompute.endpoint.engines.resources import dask_resources
from fedcompute.endpoint.launchers import (
    MPIRequest,
    NodePool,
    batch_nodes,
    check_launcher,
    compose_prefix,
    expand_hostlist,
    flavor_from_version,
    launch_environment,
    mpi_request,
    needs_launch,
    resolve_launcher,
)


@pytest.mark.parametrize(("spec", "expected"), [
    ({"num_nodes": 2, "ranks_per_node": 4}, MPIRequest(2, 4, 8)),
    ({"num_ranks": 6, "num_nodes": 2}, MPIRequest(2, 3, 6)),
    ({"num_ranks": 5, "num_nodes": 2}, MPIRequest(2, 3, 5)),
    ({"num_ranks": 8, "ranks_per_node": 4}, MPIRequest(2, 4, 8)),
    ({"num_ranks": 4}, MPIRequest(1, 4, 4)),
    ({"num_ranks": 1, "num_nodes": 8}, MPIRequest(8, 1, 1)),  # Globus Compute's tutorial
    ({"num_nodes": "2", "ranks_per_node": "2"}, MPIRequest(2, 2, 4)),
    ({"launcher_options": "--mpi=pmix"}, MPIRequest(1, 1, 1, "--mpi=pmix")),
    ({"num_ranks": 2, "launcher_options": ["--bind-to", "core"]},
     MPIRequest(1, 2, 2, "--bind-to core")),
])
def test_mpi_request_fills_in_the_missing_counts(spec, expected):
    assert mpi_request(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ({"num_nodes": 0}, "num_nodes'] must be a positive integer"),
    ({"num_ranks": True}, "num_ranks'] must be a positive integer"),
    ({"ranks_per_node": 1.5}, "ranks_per_node'] must be a positive integer"),
    ({"num_ranks": 9, "num_nodes": 2, "ranks_per_node": 4}, "does not fit"),
    ({"launcher_options": 3}, "launcher_options'] must be a string"),
])
def test_bad_mpi_requests_name_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        mpi_request(spec)
    with pytest.raises(ValueError, match=message):  # the agent's dispatch-time check
        dask_resources(spec)


def test_no_mpi_keys_no_request():
    assert mpi_request({"GPU": 1}) is None and mpi_request(None) is None
    assert not needs_launch({"GPU": 1, "walltime": 5})
    assert needs_launch({"num_ranks": 2}) and needs_launch({"container": {}})


REQ = MPIRequest(2, 4, 8, "--exclusive")


def test_srun_prefix():
    assert compose_prefix("srun", REQ, ["n1", "n2"]) == (
        "srun --ntasks=8 --ntasks-per-node=4 --nodes=2 --nodelist=n1,n2 --exclusive")


def test_mpiexec_prefixes_follow_the_installed_mpi():
    assert compose_prefix("mpiexec", REQ, ["n1", "n2"], flavor="openmpi") == (
        "mpiexec -n 8 --host n1:4,n2:4 --exclusive")
    assert compose_prefix("mpiexec", REQ, ["n1", "n2"], flavor="mpich") == (
        "mpiexec -n 8 -ppn 4 -hosts n1,n2 --exclusive")
    assert compose_prefix("mpirun", MPIRequest(1, 2, 2), ["a"], flavor="openmpi") == (
        "mpirun -n 2 --host a:2")
    assert compose_prefix("openmpi", MPIRequest(1, 2, 2), ["a"]).startswith("mpiexec -n 2 --host")
    assert compose_prefix("mpich", MPIRequest(1, 2, 2), ["a"]) == "mpiexec -n 2 -ppn 2 -hosts a"
    assert compose_prefix("aprun", MPIRequest(1, 2, 2), ["a"]) == "aprun -n 2 -N 2 -node-list a"


def test_template_launcher():
    template = "mylaunch -np {num_ranks} -per {ranks_per_node} -on {nodelist} {launcher_options}"
    assert check_launcher(template) == template
    assert compose_prefix(template, REQ, ["n1", "n2"]) == (
        "mylaunch -np 8 -per 4 -on n1,n2 --exclusive")
    with pytest.raises(ValueError, match="unknown or bad field"):
        check_launcher("mylaunch {ranks}")


def test_launcher_settings():
    assert check_launcher(None) == "auto"
    with pytest.raises(ValueError, match="did you mean 'mpiexec'"):
        check_launcher("mpiexe")
    assert resolve_launcher("auto", {"SLURM_JOB_ID": "7"}) == "srun"
    assert resolve_launcher("auto", {}) == "mpiexec"
    assert resolve_launcher("mpirun", {"SLURM_JOB_ID": "7"}) == "mpirun"
    assert flavor_from_version("mpiexec (OpenRTE) 4.1.4") == "openmpi"
    assert flavor_from_version("mpiexec (Open MPI) 5.0.3") == "openmpi"
    assert flavor_from_version("HYDRA build details:\n    Version: 4.1.2") == "mpich"


def test_launch_environment_has_globus_names_and_root_switches():
    env = launch_environment("srun -n 2", MPIRequest(1, 2, 2), ["n1"], as_root=True)
    assert env["FEDCOMPUTE_MPI_PREFIX"] == env["PARSL_MPI_PREFIX"] == "srun -n 2"
    assert env["PARSL_NUM_RANKS"] == env["FEDCOMPUTE_NUM_RANKS"] == "2"
    assert env["FEDCOMPUTE_MPI_NODELIST"] == "n1"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in launch_environment("x", MPIRequest(1, 1, 1), ["a"])


def test_hostlists():
    assert expand_hostlist("n[01-03,07],gpu1") == ["n01", "n02", "n03", "n07", "gpu1"]
    assert expand_hostlist("localhost") == ["localhost"]
    assert expand_hostlist("a[1-2]-ib[0-1]") == ["a1-ib0", "a1-ib1", "a2-ib0", "a2-ib1"]


def test_batch_nodes_from_each_batch_system():
    files = {"/pbs": "x1\nx1\nx2\n", "/sge": "h1 4 all.q@h1 UNDEFINED\nh2 4 all.q@h2 UNDEFINED\n"}
    read = files.__getitem__
    assert batch_nodes({"SLURM_JOB_NODELIST": "c[1-2]"}, read) == ["c1", "c2"]
    assert batch_nodes({"PBS_NODEFILE": "/pbs"}, read) == ["x1", "x2"]
    assert batch_nodes({"PE_HOSTFILE": "/sge"}, read) == ["h1", "h2"]
    assert batch_nodes({"LSB_MCPU_HOSTS": "l1 4 l2 4"}, read) == ["l1", "l2"]
    assert batch_nodes({"LSB_HOSTS": "l1 l1 l2"}, read) == ["l1", "l2"]
    assert batch_nodes({}, read) == ["localhost"]


def test_node_pool_lends_disjoint_nodes_and_refuses_too_many():
    pool = NodePool(["a", "b", "c"])
    with pytest.raises(ValueError, match="num_nodes=4.*has 3 node"):
        with pool.hold(4):
            pass
    got: list[list[str]] = []
    with pool.hold(2) as first:
        waiter = threading.Thread(target=lambda: got.append(_hold(pool, 2)))
        waiter.start()
        waiter.join(0.3)  # it must still wait: only one node is free
        assert waiter.is_alive() and not got
    waiter.join(5)
    assert first == ["a", "b"] and got == [["a", "b"]]
    assert pool.free == ["a", "b", "c"]


def _hold(pool: NodePool, count: int) -> list[str]:
    with pool.hold(count) as nodes:
        return nodes


def test_mpi_launch_uses_the_worker_setting(monkeypatch):
    monkeypatch.setattr(launchers, "_pool", NodePool(["n1"]))
    monkeypatch.setenv(launchers.LAUNCHER_ENV, "mylaunch -n {num_ranks} --on {nodelist}")
    with launchers.mpi_launch(MPIRequest(1, 3, 3)) as env:
        assert env["FEDCOMPUTE_MPI_PREFIX"] == "mylaunch -n 3 --on n1"
