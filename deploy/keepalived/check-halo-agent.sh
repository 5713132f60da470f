#!/bin/bash
# keepalived's vrrp_script for halo-agent: exits 0 when the agent on this
# node is ready (GET /readyz on its admin listener answers 200: every
# listener bound, a config applied), non-zero otherwise, within ~1 s.
#
# Usage: check-halo-agent.sh [ADMIN_ADDR]   (default 127.0.0.1:18002, the
# agent's --admin-listen; an IPv6 address goes in brackets: [::1]:18002)
#
# Install root-owned and not writable by others (keepalived's
# enable_script_security refuses it otherwise):
#   install -m 0755 check-halo-agent.sh /etc/keepalived/check-halo-agent.sh
set -euo pipefail

addr=${1:-127.0.0.1:18002}

if command -v curl >/dev/null 2>&1; then
	exec curl -fsS --max-time 1 -o /dev/null "http://${addr}/readyz"
fi

# No curl: HTTP/1.0 over bash's /dev/tcp, bounded by timeout(1).
host=${addr%:*}
port=${addr##*:}
host=${host#[}
host=${host%]}
# shellcheck disable=SC2016 # expanded by the inner bash, from its arguments
exec timeout 1 bash -c '
	exec 3<>"/dev/tcp/$1/$2" || exit 1
	printf "GET /readyz HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n" "$3" >&3
	read -r _ code _ <&3 || exit 1
	[ "$code" = 200 ]
' check-halo-agent "$host" "$port" "$addr"
