#!/usr/bin/env bash
# API conformance: run schemathesis (every check, the coverage, fuzzing and stateful phases)
# against a release server on the in-memory backend, once with API keys and once with auth
# off, then (if a Redis answers at REDIS_URL, default redis://127.0.0.1:6379) once more on the
# Redis backend under a key prefix of its own, deleted afterwards; fail if it finds anything.
# Not part of `cargo test` (it needs Python and a schemathesis from PyPI); run it after
# changing a route or the OpenAPI document.
#
#   pip install schemathesis     # once
#   scripts/api-conformance.sh   # [extra schemathesis args, e.g. --max-examples 500]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v schemathesis >/dev/null || { echo "schemathesis is not installed: pip install schemathesis" >&2; exit 2; }
cargo build --release --example server
port_base=${PORT_BASE:-18470}
status=0
run() { # run NAME PORT KEY ENV... : start a server with ENV, run schemathesis (sending KEY, if
        # not empty, as X-API-Key), stop the server
    local name=$1 port=$2 key=$3; shift 3
    local auth=()
    [ -n "$key" ] && auth=(-H "X-API-Key: $key")
    env "$@" API_PORT="$port" RATE_LIMIT_PER_MINUTE=0 LOG_LEVEL=warn \
        target/release/examples/server > "target/api-conformance-$name.log" 2>&1 &
    local pid=$!
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/api/v1/health/live" > /dev/null && break
        sleep 0.1
    done
    echo "== schemathesis, $name (server log: target/api-conformance-$name.log)"
    schemathesis --config-file scripts/schemathesis.toml run "http://127.0.0.1:$port/openapi.json" \
        --workers 2 "${auth[@]}" "${extra[@]}" || status=1
    kill -INT "$pid"; wait "$pid" || true
}
extra=("$@")
run auth-on "$port_base" conformance-admin API_KEYS=conformance-user ADMIN_API_KEYS=conformance-admin
run auth-off "$((port_base + 1))" ""
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
if command -v redis-cli > /dev/null && [ "$(redis-cli -u "$redis_url" ping 2>/dev/null)" = PONG ]; then
    prefix="conformance-$$"
    run redis "$((port_base + 2))" conformance-admin API_KEYS=conformance-user \
        ADMIN_API_KEYS=conformance-admin REDIS_URL="$redis_url" REDIS_PREFIX="$prefix"
    redis-cli -u "$redis_url" --scan --pattern "{$prefix}*" | xargs -r redis-cli -u "$redis_url" del > /dev/null
else
    echo "== no Redis answers at $redis_url: the Redis backend was not checked" >&2
fi
exit $status
