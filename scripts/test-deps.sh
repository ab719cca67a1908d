#!/usr/bin/env bash
# What the tests need beyond Python packages: Debian's chromium for the browser tests, and PostgreSQL's server
# binaries (initdb, postgres) for the PostgreSQL tests, which run their own throwaway server on 127.0.0.1.
# Installs them where it can (as root); otherwise those tests skip with a clear message.
set -u
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${missing[*]} for the tests..."
  # Keep the package's own PostgreSQL service from starting: only the binaries are wanted.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
    || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped"
else
  echo "note: ${missing[*]} not installed and this is not root; the tests that need them will be skipped"
fi
exit 0
