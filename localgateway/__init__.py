"""Local API Gateway (WebSocket + REST) emulator for Chalice projects.

Development tooling only: never imported by ``chalicelib`` and never shipped to Lambda.
Layers (like ``chalice.local``):

* :mod:`localgateway.events` - pure builders of the events API Gateway, SQS and EventBridge send;
* :mod:`localgateway.core` - transport-free gateway: connection registry, limits, chaos decisions,
  ``@connections`` semantics (status, headers, body);
* :mod:`localgateway.invoker` - the one interface through which handlers are invoked;
* :mod:`localgateway.project` - loading a Chalice project the way ``chalice local`` does;
* :mod:`localgateway.sqs` - local SQS queues (moto) and the poller feeding ``on_sqs_message``;
* :mod:`localgateway.server` - aiohttp I/O (WebSocket, management API, static files);
* :mod:`localgateway.__main__` - the command line.
"""

__all__: list[str] = []
