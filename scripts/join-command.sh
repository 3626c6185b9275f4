#!/usr/bin/env bash
# Prints how another machine joins the master `make run` started: the
# `wasmlet-agent` command, with an address of this machine other machines can
# reach, or, when the master listens on loopback only, that no other machine
# can join and what to change. run-local.sh prints it; the tests run it alone.
# Usage: join-command.sh LISTEN_HOST PORT JOIN_TOKEN
# On all interfaces (0.0.0.0, ::), the address is the source address of this
# machine's default route, else the first of `hostname -I`: the master's
# certificate names every address of this machine's interfaces.
set -euo pipefail
listen=$1
port=$2
token=$3

case "$listen" in
127.* | ::1 | localhost)
    cat <<EOF
Other machines cannot join: the master listens on $listen, which only this machine reaches.
To join other machines, start it on all interfaces: make run LISTEN=0.0.0.0
EOF
    exit 0
    ;;
esac

address=
if [[ "$listen" == 0.0.0.0 || "$listen" == :: ]]; then
    # `ip route get` names the address packets to the outside leave from.
    address=$(ip -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([^ ]*\).*/\1/p' || true)
    [[ -n "$address" ]] || address=$( (hostname -I 2>/dev/null || true) | awk '{print $1}')
else
    address=$listen
fi
if [[ -z "$address" ]]; then
    cat <<EOF
This machine has no address other than loopback that other machines could reach; once it has one, join with:
  wasmlet-agent --master https://<this machine's address>:$port --join-token $token
EOF
    exit 0
fi
[[ "$address" == *:* ]] && address="[$address]"
cat <<EOF
Join another machine with:
  wasmlet-agent --master https://$address:$port --join-token $token
EOF
