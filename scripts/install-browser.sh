#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (tests/browser) when it is missing.
# Idempotent and quiet; Playwright is pointed at /usr/bin/chromium (no `playwright install`).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
