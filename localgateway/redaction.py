"""Log redaction for the gateway: the very code of ``chalicelib/redaction.py``, loaded by path.

The gateway runs any Chalice project, whose own ``chalicelib`` package must not be shadowed by
ours, so instead of ``import chalicelib.redaction`` it executes that file under a private module
name.  One implementation, so the app and the gateway can never disagree about what is a secret.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SOURCE = Path(__file__).resolve().parent.parent / "chalicelib" / "redaction.py"
_NAME = "localgateway._redaction_impl"


def _load() -> object:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, _SOURCE)
    if spec is None or spec.loader is None:  # pragma: no cover - the file ships with the gateway
        raise ImportError(f"cannot load {_SOURCE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


_impl = _load()
REDACTED: str = _impl.REDACTED  # type: ignore[attr-defined]
RedactingFilter = _impl.RedactingFilter  # type: ignore[attr-defined]
redact = _impl.redact  # type: ignore[attr-defined]
scrub_record = _impl.scrub_record  # type: ignore[attr-defined]
install = _impl.install  # type: ignore[attr-defined]

__all__ = ["REDACTED", "RedactingFilter", "install", "redact", "scrub_record"]
