#!/usr/bin/env bash
# Debian's headless Chromium for the reviewer-page tests (Playwright drives it via executablePath;
# Playwright's own browser download cannot work on machines without internet).
set -euo pipefail
if [ ! -x /usr/bin/chromium ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version
