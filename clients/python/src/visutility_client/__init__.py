"""Python client for the visutility daemon's ingest socket.

    from visutility_client import Client

    with Client() as client:               # $VISUTILITY_SOCKET or the daemon's default
        client.send("fraud-v3", drift_score=0.12, accuracy=0.93)
    # leaving the block flushed: every event above is durable in the daemon

``send`` never blocks and never raises; see ``Client`` for what happens when the daemon is
down.
"""

from ._aio import AsyncClient
from ._client import Client, ClientClosed, FlushTimeout, valid_model_id
from ._paths import default_socket, runtime_dir

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosed",
    "FlushTimeout",
    "default_socket",
    "runtime_dir",
    "valid_model_id",
]
__version__ = "0.1.0"
