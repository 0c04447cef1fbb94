"""The fedcompute endpoint: an agent that leases tasks from the service and runs them on Dask."""
