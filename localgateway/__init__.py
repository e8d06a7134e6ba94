"""Local API Gateway (WebSocket + REST) emulator for Chalice projects.

Development tooling only: never imported by ``chalicelib`` and never shipped to Lambda.
Layers (like ``chalice.local``):

* :mod:`localgateway.events` - pure builders of the events API Gateway, SQS and EventBridge send;
* :mod:`localgateway.core` - transport-free gateway: the connection registry, limits, chaos
  decisions, ``@connections`` semantics, ``$connect`` and close decisions;
* :mod:`localgateway.invoker` - the one interface through which handlers are invoked
  (:class:`~localgateway.invoker.InProcessInvoker` for ``--in-process``);
* :mod:`localgateway.containers` / :mod:`localgateway.worker` - Lambda's execution model: every
  function in worker processes of its own;
* :mod:`localgateway.project` - loading a Chalice project the way ``chalice local`` does, function
  scoping and the environment rules;
* :mod:`localgateway.sqs` / :mod:`localgateway.sqs_server` - local SQS in its own process and the
  pollers feeding ``on_sqs_message``;
* :mod:`localgateway.server` - aiohttp I/O (WebSocket, management API, static files);
* :mod:`localgateway.reload` - reload on content changes;
* :mod:`localgateway.__main__` / :mod:`localgateway.invoke` - the command line;
* :mod:`localgateway.testing`, :mod:`localgateway.pytest_plugin`, :mod:`localgateway.recording` -
  testing helpers for any Chalice WebSocket app.
"""

__all__: list[str] = []
