"""Every use of distributed's and dask-jobqueue's internals by the endpoint, in one place.

The endpoint drives its cluster manager from outside (remote ``adapt``/``scale``, ended batch
jobs, shorter message batching, comms that arrive without a listener), which those libraries
have no public API for yet. Each function names what would replace it;
``tests/endpoint/test_compat.py`` fails loudly when one of these internals changes shape.
"""

from __future__ import annotations

from typing import Any

# --- distributed.deploy.Cluster: its Adaptive and log ----------------------------------------


def cluster_adaptive(cluster: Any) -> Any:
    """The cluster's running ``Adaptive`` (None when it does not adapt).

    Replaced by: none yet (``Cluster.adapt`` returns it, but a cluster adapted by someone else
    does not say). Private: ``Cluster._adaptive``.
    """
    adaptive = getattr(cluster, "_adaptive", None)
    return adaptive if adaptive is not None and adaptive.periodic_callback else None


def stop_adaptive(cluster: Any) -> None:
    """Stop the cluster's Adaptive, if any (``Adaptive.stop`` is public; finding it is not)."""
    adaptive = getattr(cluster, "_adaptive", None)
    if adaptive is not None:
        adaptive.stop()


def adaptive_options(cluster: Any) -> dict:
    """The options the cluster's Adaptive was started with (a copy).

    Replaced by: none yet. Private: ``Cluster._adaptive_options``.
    """
    return dict(getattr(cluster, "_adaptive_options", None) or {})


def readapt(cluster: Any, **options: Any) -> Any:
    """``cluster.adapt(**options)`` with nothing left over from earlier calls: ``Cluster.adapt``
    merges its arguments into the previous call's.

    Replaced by: ``cluster.adapt`` once it stops merging (none yet). Private: writes
    ``Cluster._adaptive_options``.
    """
    cluster._adaptive_options = {}
    return cluster.adapt(**options)


def cluster_manager_logs(cluster: Any) -> list[tuple[Any, str]]:
    """The cluster manager's own log lines as (datetime, text).

    Replaced by: ``Cluster.get_logs(cluster=True, scheduler=False, workers=False)`` where the
    caller can wait for it (it is a sync/async method; the bridge runs on the loop).
    Private: ``Cluster._cluster_manager_logs``.
    """
    return list(getattr(cluster, "_cluster_manager_logs", ()))


# --- distributed: message batching -----------------------------------------------------------


def set_client_batching(client: Any, interval: float) -> None:
    """Batch the client's messages to the scheduler for ``interval`` seconds (Dask: 10 ms).

    Replaced by: none yet (``Client`` builds its ``BatchedSend`` with a fixed interval).
    Internal: ``client.scheduler_comm`` (a ``BatchedSend``) and its ``interval``.
    """
    client.scheduler_comm.interval = interval


def worker_streams(scheduler: Any) -> dict[str, Any]:
    """The scheduler's ``BatchedSend`` to each worker, by worker address.

    Replaced by: none yet (the interval is ``distributed.worker``'s, for the other direction).
    Internal: ``Scheduler.stream_comms``.
    """
    return scheduler.stream_comms


# --- distributed: a comm that arrived without a listener --------------------------------------


async def listener_handshake(comm: Any) -> None:
    """The listener side of Dask's comm handshake, for a comm the endpoint dialled out.

    Replaced by: none yet. Internal: what ``distributed.comm.core.Listener.on_connection``
    does (``handshake_info``, ``handshake_configuration``, ``local_info``/``remote_info``).
    The scheduler's own listener also sends pickle protocol 4 and no compression.
    """
    local_info = {**comm.handshake_info(), "pickle-protocol": 4, "compression": None}
    await comm.write(local_info)
    handshake = await comm.read()
    comm.remote_info = handshake
    comm.remote_info["address"] = comm.peer_address
    comm.local_info = local_info
    comm.local_info["address"] = comm.local_address
    comm.handshake_options = comm.handshake_configuration(comm.local_info, comm.remote_info)


# --- dask-jobqueue --------------------------------------------------------------------------


def job_template(cluster: Any) -> Any:
    """A Job of the cluster's kind, never submitted: its ``worker_processes`` and
    ``worker_process_threads`` say what one batch job brings.

    Replaced by: none yet (``JobQueueCluster.job_script()`` gives only the script).
    Private: ``JobQueueCluster._dummy_job``.
    """
    return cluster._dummy_job


def is_rescaling(cluster: Any) -> bool:
    """True while the cluster manager is starting or stopping workers (its plan is in flux).

    Replaced by: none yet. Private: ``SpecCluster._lock`` and ``_correct_state_waiting``.
    """
    return cluster._lock.locked() or bool(cluster._correct_state_waiting)


def correct_state(cluster: Any) -> Any:
    """Bring the cluster's workers in line with its ``worker_spec`` (close what was dropped).

    Replaced by: none yet (``scale(n)`` re-plans by count, not by name). Private:
    ``SpecCluster._correct_state``.
    """
    return cluster._correct_state()
