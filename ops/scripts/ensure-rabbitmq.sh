#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672 with the plugins the project uses.
# Reuses a running broker; otherwise starts the local one, installing it from Debian's packages if needed.
# With --mark FILE, a broker this script started is noted in FILE, so the caller can stop what it started
# (ops/scripts/stop-rabbitmq.sh FILE); a broker that was already running is never noted, and never stopped.
set -euo pipefail

mark=""
if [[ "${1:-}" == "--mark" ]]; then
    mark="${2:?--mark needs a file}"
    rm -f "$mark"
fi

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if ! port_open; then
    if ! command -v rabbitmq-server >/dev/null 2>&1; then
        echo "ensure-rabbitmq: installing rabbitmq-server from Debian's packages"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rabbitmq-server >/dev/null
    fi
    echo "ensure-rabbitmq: starting rabbitmq-server"
    rabbitmq-server -detached
    # Noted at once, so a broker that starts but then fails the checks below is still stopped by the caller.
    if [[ -n "$mark" ]]; then mkdir -p "$(dirname "$mark")"; echo "started $(date -u +%FT%TZ)" >"$mark"; fi
    for _ in $(seq 1 120); do port_open && break; sleep 0.5; done
    port_open || { echo "ensure-rabbitmq: the broker did not open 127.0.0.1:5672 within 60 s" >&2; exit 1; }
    rabbitmqctl -q await_startup --timeout 60
fi

# Management gives the tests their per-run vhost and the control service its queue depths;
# consistent-hash is the executor's sharding exchange. Enabling an enabled plugin is a no-op.
if command -v rabbitmq-plugins >/dev/null 2>&1; then
    rabbitmq-plugins enable --quiet rabbitmq_management rabbitmq_consistent_hash_exchange >/dev/null
fi
for _ in $(seq 1 120); do
    curl -fsS -u guest:guest http://127.0.0.1:15672/api/overview >/dev/null 2>&1 && exit 0
    sleep 0.5
done
echo "ensure-rabbitmq: the management API did not answer on 127.0.0.1:15672 within 60 s" >&2
exit 1
