#!/usr/bin/env bash
# What the tests need beyond Python packages: Debian's chromium for the browser tests, PostgreSQL's server
# binaries (initdb, postgres) for the PostgreSQL tests, which run their own throwaway server on 127.0.0.1, and
# Prometheus (prometheus, promtool) for the tests of the alerting rules.
# Installs them where it can (as root); otherwise those tests skip with a clear message.
set -u
# /dev/full stands for a full disk in the store's tests; some containers come without that device node.
if [ ! -e /dev/full ] && [ "$(id -u)" = "0" ]; then
  mknod -m 666 /dev/full c 1 7 2>/dev/null \
    || echo "note: /dev/full is missing and could not be made; the full-disk tests will be skipped"
fi
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
if ! command -v initdb >/dev/null && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
# Without its recommended node exporter: only the two binaries are wanted.
lean=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || lean+=(prometheus)
all=("${missing[@]}" "${lean[@]}")
if [ ${#all[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "installing Debian's ${all[*]} for the tests..."
  # Keep the packages' own services (PostgreSQL, Prometheus) from starting: only the binaries are wanted.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "warning: apt-get update failed"
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq "${missing[@]}" >/dev/null \
      || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped"
  fi
  if [ ${#lean[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null \
      || echo "warning: could not install ${lean[*]}; the tests that need them will be skipped"
  fi
else
  echo "note: ${all[*]} not installed and this is not root; the tests that need them will be skipped"
fi
exit 0
