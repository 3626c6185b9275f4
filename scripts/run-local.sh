#!/usr/bin/env bash
# `make run`: a master and one agent on this machine, with the hello (job) and
# sensor (daemon) examples applied through the master. Ctrl-C stops both.
# The master creates its CA and tokens on first start; the agent joins with the
# join token, and the CLI's context `local` (in $WASMLETCONFIG, else
# ~/.config/wasmlet/config.toml) is pointed at the master with its CA and admin token.
# Usage: run-local.sh BIN_DIR RUN_DIR
# Ports: WASMLET_RUN_MASTER_PORT (7070), WASMLET_RUN_AGENT_PORT (7071), WASMLET_RUN_INGRESS_PORT (7080).
# The master listens on WASMLET_RUN_LISTEN (127.0.0.1; `make run LISTEN=0.0.0.0`
# sets it, so other machines can join with the command printed at the end).
set -euo pipefail
bin=$1
run=$2
master_port=${WASMLET_RUN_MASTER_PORT:-7070}
agent_port=${WASMLET_RUN_AGENT_PORT:-7071}
ingress_port=${WASMLET_RUN_INGRESS_PORT:-7080}
listen=${WASMLET_RUN_LISTEN:-127.0.0.1}
case "$listen" in
*:*) listen_addr="[$listen]:$master_port" ;;
*) listen_addr="$listen:$master_port" ;;
esac
# This machine's agent and CLI reach the master on loopback unless it listens on one address only.
case "$listen" in
0.0.0.0 | :: | 127.* | localhost) master_url=https://127.0.0.1:$master_port ;;
*) master_url=https://$listen_addr ;;
esac
here="$(cd "$(dirname "$0")" && pwd)"
mkdir -p "$run/master" "$run/agent"

pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

"$bin/wasmlet-master" --data-dir "$run/master" --listen "$listen_addr" &
pids+=($!)
for _ in $(seq 1 300); do
    [[ -s "$run/master/join.token" && -s "$run/master/admin.token" ]] && curl -sf --cacert "$run/master/pki/ca.crt" "$master_url/healthz" >/dev/null && break
    sleep 0.1
done
"$bin/wasmlet" config set-context local --master "$master_url" --token "$(cat "$run/master/admin.token")" \
    --certificate-authority "$run/master/pki/ca.crt" >/dev/null
"$bin/wasmlet" config use-context local >/dev/null

# The manifests first: they create the sensor's data dir, which the agent's allow-list names.
bash "$here/../wasm-examples/manifests.sh" "$run/manifests" "$run/sensor-data" >/dev/null

"$bin/wasmlet-agent" --data-dir "$run/agent" --api-addr "127.0.0.1:$agent_port" --ingress-addr "127.0.0.1:$ingress_port" \
    --master "$master_url" --join-token "$(cat "$run/master/join.token")" --allowed-host-paths "$run/sensor-data" &
pids+=($!)

"$bin/wasmlet" apply -f "$run/manifests" --wait --timeout 2m

cat <<EOF

wasmlet is running: master $master_url, agent https://127.0.0.1:$agent_port, ingress http://127.0.0.1:$ingress_port (Ctrl-C stops both).
The CLI's context "local" points at this master (its CA and admin token are in $run/master/).
$(bash "$here/join-command.sh" "$bin" "$run/master" "$listen_addr")
In another terminal (the CLI is $bin/wasmlet):
  wasmlet get nodes -o wide
  wasmlet get instances
  wasmlet logs workload/sensor -f
  curl -s http://127.0.0.1:$ingress_port/hello
EOF
wait -n
