#!/usr/bin/env bash
# What `allot bench compare` needs besides allot: Debian's redis-server and postgresql (the
# bench starts and stops its own instances, in temp dirs, on free ports; the packages' own
# services are not used), and iproute2's `ip` for the emulated WAN's network namespaces.
# Run as root.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "bench compare dependencies present"
