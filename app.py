"""WebSocket rooms on API Gateway + Lambda, safe against the "410 Gone" family of bugs.

This app is the Chalice app plus the rooms blueprint (chalicelib/blueprint.py), which holds
every handler; docs/blueprint.md shows how to mount it in an existing Chalice app instead.
Importing this module needs no credentials or network and loads no boto3 (cold starts stay close
to a bare Chalice app): the library is imported on first use.
"""

from __future__ import annotations

import logging
import os

from chalice.app import Chalice

from chalicelib.redaction import install as _install_log_redaction

# Before anything logs: tokens in query strings and credential headers never reach a log line.
_install_log_redaction()

app = Chalice(app_name="ws-rooms")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.log.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
logging.getLogger("chalicelib").setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())

from chalicelib.blueprint import rooms  # noqa: E402  (validates the settings at cold start)

app.register_blueprint(rooms)
