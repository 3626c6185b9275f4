#!/usr/bin/env bash
# Writes the Workload manifests of the examples that `make run` and `make run-agent` start:
#   hello  - a job that prints its args and env, then exits 0
#   sensor - a daemon reading DATA_DIR/value every second, the IoT case
#   http-hello - a wasi:http service on the ingress at /hello
# Usage: manifests.sh OUT_DIR DATA_DIR   (the examples must be built: build.sh)
set -euo pipefail
out=$1
data=$2
dist="$(cd "$(dirname "$0")/dist" && pwd)"
digest() { echo "sha256:$(sha256sum "$dist/$1.wasm" | cut -d' ' -f1)"; }
mkdir -p "$out" "$data"
data="$(cd "$data" && pwd)"
[ -f "$data/value" ] || echo 21.5 > "$data/value"

cat > "$out/hello.yaml.tmp" <<EOF
apiVersion: wasmlet.io/v1
kind: Workload
metadata:
  name: hello
spec:
  type: job
  module:
    source: $dist/hello.wasm
    digest: $(digest hello)
  args: ["--greeting", "hi"]
  env: {GREETING: hello}
EOF
cat > "$out/sensor.yaml.tmp" <<EOF
apiVersion: wasmlet.io/v1
kind: Workload
metadata:
  name: sensor
  labels: {app: sensor}
spec:
  type: daemon
  replicas: 1
  module:
    source: $dist/sensor.wasm
    digest: $(digest sensor)
  args: ["--interval", "1000", "--file", "/data/value"]
  dirs:
  - path: /data
    hostPath: $data
    readOnly: true
  resources:
    limits: {memory: 16Mi}
EOF
cat > "$out/http-hello.yaml.tmp" <<EOF
apiVersion: wasmlet.io/v1
kind: Workload
metadata:
  name: http-hello
spec:
  type: service
  replicas: 1
  module:
    source: $dist/http-hello.wasm
    digest: $(digest http-hello)
  route: {pathPrefix: /hello}
  resources:
    limits: {memory: 32Mi, requestTimeout: 5s}
EOF
# Renamed into place so the agent never reads a half-written file.
mv "$out/hello.yaml.tmp" "$out/hello.yaml"
mv "$out/sensor.yaml.tmp" "$out/sensor.yaml"
mv "$out/http-hello.yaml.tmp" "$out/http-hello.yaml"
echo "manifests in $out (sensor reads $data/value)"
