"""The Dask relay: joins a user's ``fed://`` websocket to a websocket the endpoint dials out,
across any number of service instances.

``peers``     websocket ends, the pump between two, the byte pipe of a hop
``registry``  what instances share in Redis: bridges, pending comms, instances, counts
``state``     this process's bridges and comms (:class:`Relay`)
``hop``       forwarding a dial-back to the instance holding the user's side
``routes``    the blueprint: the Dask routes
``dashboard`` an endpoint's Dask dashboard, relayed to the browser
"""

from . import dashboard  # noqa: F401 - adds its routes to the blueprint
from .routes import bp
from .state import Relay

__all__ = ["Relay", "bp"]
