"""The repository's tests use the gateway's pytest plugin, as any Chalice WebSocket app can."""

pytest_plugins = ["localgateway.pytest_plugin"]
