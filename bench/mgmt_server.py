"""A local management API (``@connections``) in its own process, for the delivery-cost workload.

``python -m bench.mgmt_server N`` opens connections ``c0``..``c{N-1}``, prints its endpoint and
serves until stdin closes (or 10 minutes pass).  It answers like API Gateway (it is the tests'
:class:`tests.support.management_api.FakeManagementApi`), so the client side runs real boto3 code.
"""

from __future__ import annotations

import sys
import threading

from tests.support.management_api import FakeManagementApi

MAX_LIFETIME = 600.0


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    api = FakeManagementApi().start()
    api.open(*(f"c{i}" for i in range(count)))
    print(api.endpoint, flush=True)
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(MAX_LIFETIME)
    api.stop()


if __name__ == "__main__":
    main()
