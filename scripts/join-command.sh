#!/usr/bin/env bash
# Prints how another machine joins the master `make run` started: the command
# `wasmlet-master join-command` makes (for a master on all interfaces, with an
# address of this machine's interfaces, all of which its certificate names),
# or, when that address is loopback, that no other machine can join and what
# to change. run-local.sh prints it; the tests run it alone.
# Usage: join-command.sh BIN_DIR MASTER_DATA_DIR LISTEN_ADDR
set -euo pipefail
bin=$1
data_dir=$2
listen_addr=$3

command=$("$bin/wasmlet-master" join-command --data-dir "$data_dir" --listen "$listen_addr")
address=
pattern='--master https?://(\[[^]]*\]|[^:/ ]+)'
[[ "$command" =~ $pattern ]] && address=${BASH_REMATCH[1]}
case "$address" in
127.* | "[::1]" | localhost)
    cat <<EOF
Other machines cannot join: this master is at $address, which only this machine reaches.
To let other machines join, start it on all interfaces: make run LISTEN=0.0.0.0
EOF
    ;;
*)
    printf 'Join another machine with:\n  %s\n' "$command"
    ;;
esac
