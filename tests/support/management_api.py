"""The app's tests use the gateway's recording ``@connections`` endpoint (one implementation).

:class:`localgateway.recording.RecordingManagementApi` is a real HTTP endpoint that answers like
API Gateway's management API (410 ``GoneException``, 403, 429, 413 with ``x-amzn-ErrorType``)
and records every call; this app's frames are JSON objects with a ``type``.
"""

from __future__ import annotations

from localgateway.recording import Call, RecordingManagementApi

__all__ = ["Call", "FakeManagementApi"]


class FakeManagementApi(RecordingManagementApi):
    """``RecordingManagementApi`` plus :meth:`types`, the ``type`` of each frame received."""

    def types(self, connection_id: str) -> list[str]:
        return [frame["type"] for frame in self.received(connection_id)]
