#!/usr/bin/env bash
# Stop the local RabbitMQ only if ensure-rabbitmq.sh --mark FILE started it (FILE exists); otherwise do nothing.
set -euo pipefail
mark="${1:?usage: stop-rabbitmq.sh MARK_FILE}"
[[ -f "$mark" ]] || exit 0
echo "stop-rabbitmq: stopping the broker the tests started"
rabbitmqctl -q stop || echo "stop-rabbitmq: rabbitmqctl stop failed; the broker may still run" >&2
rm -f "$mark"
