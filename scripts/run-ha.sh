#!/usr/bin/env bash
# `make run-ha`: three etcd members, three masters on them and two agents, all
# on loopback, with the hello (job) and sensor (daemon) examples applied.
# Ctrl-C stops everything. The CLI's context `ha` (in $WASMLETCONFIG, else
# ~/.config/wasmlet/config.toml) lists the three masters.
# Usage: run-ha.sh BIN_DIR RUN_DIR
# Ports: WASMLET_RUN_HA_PORT (first of a range of 20, default 17000): etcd
# clients +0..2, etcd peers +3..5, masters +6..8, agents' APIs +9..10, ingresses +11..12.
set -euo pipefail
bin=$1
run=$2/ha
base=${WASMLET_RUN_HA_PORT:-17000}
here="$(cd "$(dirname "$0")" && pwd)"
command -v etcd >/dev/null || { echo "run-ha needs etcd: apt-get install etcd-server" >&2; exit 1; }
mkdir -p "$run"

pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

endpoints=() initial=()
for i in 0 1 2; do
    endpoints+=("http://127.0.0.1:$((base + i))")
    initial+=("e$i=http://127.0.0.1:$((base + 3 + i))")
done
cluster=$(IFS=,; echo "${initial[*]}")
etcd_endpoints=$(IFS=,; echo "${endpoints[*]}")
for i in 0 1 2; do
    state=new
    [[ -d "$run/etcd-$i/member" ]] && state=existing
    etcd --name "e$i" --data-dir "$run/etcd-$i" \
        --listen-client-urls "${endpoints[$i]}" --advertise-client-urls "${endpoints[$i]}" \
        --listen-peer-urls "http://127.0.0.1:$((base + 3 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 3 + i))" \
        --initial-cluster "$cluster" --initial-cluster-state "$state" --initial-cluster-token wasmlet-run-ha \
        --log-level warn --logger zap >"$run/etcd-$i.log" 2>&1 &
    pids+=($!)
done

masters=()
for i in 0 1 2; do
    port=$((base + 6 + i))
    masters+=("https://127.0.0.1:$port")
    mkdir -p "$run/master-$i"
    "$bin/wasmlet-master" --data-dir "$run/master-$i" --listen "127.0.0.1:$port" \
        --store etcd --etcd-endpoints "$etcd_endpoints" >"$run/master-$i.log" 2>&1 &
    pids+=($!)
done
master_list=$(IFS=,; echo "${masters[*]}")
for i in 0 1 2; do
    for _ in $(seq 1 300); do
        [[ -s "$run/master-$i/join.token" ]] && curl -sf --cacert "$run/master-$i/pki/ca.crt" "${masters[$i]}/healthz" >/dev/null && break
        sleep 0.1
    done
done
"$bin/wasmlet" config set-context ha --master "$master_list" --token "$(cat "$run/master-0/admin.token")" \
    --certificate-authority "$run/master-0/pki/ca.crt" >/dev/null
"$bin/wasmlet" config use-context ha >/dev/null

bash "$here/../wasm-examples/manifests.sh" "$run/manifests" "$run/sensor-data" >/dev/null
for i in 0 1; do
    mkdir -p "$run/agent-$i"
    "$bin/wasmlet-agent" --data-dir "$run/agent-$i" --name "node-$i" \
        --api-addr "127.0.0.1:$((base + 9 + i))" --ingress-addr "127.0.0.1:$((base + 11 + i))" \
        --master "$master_list" --join-token "$(cat "$run/master-0/join.token")" --allowed-host-paths "$run/sensor-data" \
        >"$run/agent-$i.log" 2>&1 &
    pids+=($!)
done

"$bin/wasmlet" apply -f "$run/manifests" --wait --timeout 2m

cat <<EOF

wasmlet is running with three masters: $master_list
on etcd $etcd_endpoints, and two agents (Ctrl-C stops everything; logs in $run).
The CLI's context "ha" lists the three masters. In another terminal (the CLI is $bin/wasmlet):
  wasmlet get masters
  wasmlet get nodes
  wasmlet get instances
Stop the leading master (its PID is in \`pgrep -f "listen 127.0.0.1:<its port>"\`) and watch another take over.
EOF
wait -n
