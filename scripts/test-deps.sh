#!/usr/bin/env bash
# What the tests need beyond Python packages: Debian's chromium for the browser tests.
# Installs it where it can (as root); otherwise the browser tests skip with a clear message.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; browser tests will be skipped"
else
  echo "note: chromium is not installed and this is not root; browser tests will be skipped"
fi
exit 0
