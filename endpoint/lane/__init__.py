"""The fast lane: short tasks reach long-lived executor processes on the Dask-provisioned
workers without a Dask task each (``server.py`` in the workers, ``agent/lanes.py`` at the
agent); tasks with resources, launchers or containers keep the Dask path."""
