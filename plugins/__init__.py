"""Adapters for workflow engines: Dask, Prefect, Airflow (each an optional extra)."""
