"""The SSX data-capture and publication pipeline on three workflow engines, each running its
steps on a fedcompute endpoint:

* :mod:`.prefect_flow` — a Prefect flow with ``FederatedTaskRunner``;
* :mod:`.airflow_dag` — an Airflow DAG with ``RemoteFunctionOperator`` (run with
  ``airflow dags test``; :mod:`.airflow_launcher` does that from Python);
* :mod:`.dask_pipeline` — plain Dask through ``Client(FederatedCluster(...))``, with
  ``fedcompute.Executor`` for the transfer and publication steps;
* :mod:`.executor_pipeline` — the reference: every step through ``fedcompute.Executor``.

The remote step functions are in :mod:`.common`. Engines are imported only by their own module.
"""

ENGINES = ("prefect", "airflow", "dask", "executor")


def runner(engine: str):
    """The ``run_<engine>(master, work_dir, *, endpoint_id, ...)`` function of an engine."""
    if engine == "prefect":
        from .prefect_flow import run_prefect
        return run_prefect
    if engine == "airflow":
        from .airflow_launcher import run_airflow
        return run_airflow
    if engine == "dask":
        from .dask_pipeline import run_dask
        return run_dask
    if engine == "executor":
        from .executor_pipeline import run_executor
        return run_executor
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
