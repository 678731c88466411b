#!/usr/bin/env bash
# Install nginx, the byte-relay baseline of bench/run.py (the floor any relay is compared
# with), from the distribution's packages. Idempotent: does nothing when nginx is already on
# PATH or in /usr/sbin. Needs root or passwordless sudo; Debian/Ubuntu (apt-get) or
# Fedora/RHEL (dnf). The package's own service is not started (bench runs its own nginx on
# a free loopback port with a generated config).
set -euo pipefail
log() { printf '[install-nginx] %s\n' "$*"; }
fail() { printf '[install-nginx] FAILED: %s\n' "$*" >&2; exit 1; }
if command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
  log "already installed: $( (command -v nginx || echo /usr/sbin/nginx) | head -n1)"
  exit 0
fi
sudo=()
if [ "$(id -u)" != 0 ]; then
  sudo -n true 2>/dev/null || fail "not root and no passwordless sudo: install nginx (nginx-light on Debian) by hand"
  sudo=(sudo -n)
fi
if command -v apt-get >/dev/null 2>&1; then
  # policy-rc.d exit 101: the package's post-install must not start a service on port 80
  policy=/usr/sbin/policy-rc.d
  created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null && "${sudo[@]}" chmod +x "$policy" && created=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || true
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null \
    || "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null \
    || { [ "$created" = 0 ] || "${sudo[@]}" rm -f "$policy"; fail "apt-get install nginx-light"; }
  [ "$created" = 0 ] || "${sudo[@]}" rm -f "$policy"
elif command -v dnf >/dev/null 2>&1; then
  "${sudo[@]}" dnf install -y -q nginx || fail "dnf install nginx"
else
  fail "no apt-get or dnf: install nginx by hand"
fi
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || fail "nginx still not found after the install"
log "installed: $(/usr/sbin/nginx -v 2>&1 || nginx -v 2>&1)"
