#!/usr/bin/env bash
# `make run`: a master and one agent on this machine, with the hello (job) and
# sensor (daemon) examples deployed through the master's API. Ctrl-C stops both.
# Usage: run-local.sh BIN_DIR RUN_DIR
set -euo pipefail
bin=$1
run=$2
master_url=http://127.0.0.1:7070
dist="$(cd "$(dirname "$0")/../wasm-examples/dist" && pwd)"
mkdir -p "$run/master" "$run/agent" "$run/sensor-data"
[ -f "$run/sensor-data/value" ] || echo 21.5 > "$run/sensor-data/value"

pids=()
stop() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

wait_for() { # what, command...
    local what=$1; shift
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "run-local: gave up waiting for $what" >&2
    exit 1
}

"$bin/wasmlet-master" --data-dir "$run/master" --listen 127.0.0.1:7070 &
pids+=($!)
wait_for "the master" curl -sf "$master_url/healthz"

"$bin/wasmlet-agent" --data-dir "$run/agent" --api-addr 127.0.0.1:7071 \
    --master "$master_url" --allowed-host-paths "$run/sensor-data" 2>&1 &
pids+=($!)
wait_for "the agent to be Ready" sh -c "curl -sf $master_url/api/v1/nodes | grep -q '\"type\":\"Ready\",\"status\":\"True\"'"

digest() { echo "sha256:$(sha256sum "$dist/$1.wasm" | cut -d' ' -f1)"; }
deploy() { # name, module, json spec fields
    local name=$1 module=$2 spec=$3 d
    d=$(digest "$module")
    curl -sf -X PUT --data-binary "@$dist/$module.wasm" "$master_url/api/v1/modules/$d" >/dev/null
    if ! curl -sf "$master_url/api/v1/workloads/$name" >/dev/null; then
        curl -sf -X POST -H 'content-type: application/json' "$master_url/api/v1/workloads" -d "{
          \"apiVersion\": \"wasmlet.io/v1\", \"kind\": \"Workload\", \"metadata\": {\"name\": \"$name\"},
          \"spec\": {\"module\": {\"source\": \"$module.wasm\", \"digest\": \"$d\"}, $spec}}" >/dev/null
    fi
}
deploy hello hello '"type": "job", "args": ["--greeting", "hi"], "env": {"GREETING": "hello"}'
deploy sensor sensor "\"type\": \"daemon\", \"args\": [\"--interval\", \"1000\", \"--file\", \"/data/value\"],
  \"dirs\": [{\"path\": \"/data\", \"hostPath\": \"$run/sensor-data\", \"readOnly\": true}], \"resources\": {\"limits\": {\"memory\": \"16Mi\"}}"

cat <<EOF

wasmlet is running: master $master_url, agent API http://127.0.0.1:7071
  curl -s $master_url/api/v1/nodes | jq '.items[] | {name: .metadata.name, ready: (.status.conditions[] | select(.type=="Ready") | .status)}'
  curl -s $master_url/api/v1/instances | jq '.items[] | {name: .metadata.name, node: .spec.node, phase: .status.phase}'
  curl -s 127.0.0.1:7071/instances | jq -r '.[].metadata.name'          # what the agent runs
  curl -s "127.0.0.1:7071/instances/\$(curl -s 127.0.0.1:7071/instances | jq -r '.[] | select(.spec.workload=="sensor") | .metadata.name')/logs?tail=3&follow=true"
  echo 22.0 > $run/sensor-data/value                                    # the sensor reads it within a second
  curl -s $master_url/api/v1/events | jq -r '.items[] | "\(.reason)\t\(.involvedObject.name)\t\(.message)"'
Ctrl-C stops both.
EOF
wait -n
