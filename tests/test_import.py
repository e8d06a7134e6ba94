"""Importing the app is a Lambda cold start: no credentials, no network, no boto3 yet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_app_imports_without_credentials_network_or_boto3() -> None:
    code = (
        "import sys, app\n"
        "assert 'WEBSOCKETS' in app.app.experimental_feature_flags\n"
        "mods = ('boto3', 'botocore', 'chalicelib.runtime')\n"
        "print(sorted(m for m in mods if m in sys.modules))\n"
        "print(sorted(app.app.handler_map))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "AWS_CONFIG_FILE": "/nonexistent",
             "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded, handlers = result.stdout.splitlines()
    # Clients are created lazily on the first invocation, so a cold import loads none of them.
    assert loaded == "[]"
    assert handlers == str(sorted(
        ["connect", "message", "disconnect", "welcome_follow_up", "fan_out_worker", "sweep",
         "push_to_room"]
    ))
