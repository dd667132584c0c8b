#!/usr/bin/env bash
# Installs and enables what tubemail's tests and benchmarks run against and do not set up themselves.
# Idempotent: each step does nothing when it is done already.
#
# - RabbitMQ's plugins: the management API (`tubemail diff` and `declare` list what the broker has
#   through it, at 127.0.0.1:15672) and the consistent-hash exchange (`hash` topics). RabbitMQ itself
#   is this machine's server at 127.0.0.1:5672.
# - Sidekiq 6.4 for `tubemail bench jobs --peers` (Debian's ruby-sidekiq, which brings Ruby). Redis,
#   which Sidekiq and apalis keep their jobs in, is this machine's server at 127.0.0.1:6379.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

RABBITMQ_PLUGINS=(rabbitmq_management rabbitmq_consistent_hash_exchange)
MANAGEMENT_API=${RABBITMQ_MANAGEMENT_URL:-http://127.0.0.1:15672}
# How long the management API may take to answer once enabled (it starts in a few seconds).
MANAGEMENT_WAIT_S=60

enable_rabbitmq_plugins() {
  if ! command -v rabbitmq-plugins >/dev/null 2>&1; then
    echo "rabbitmq: not installed here; plugins not enabled"
    return 0
  fi
  if ! rabbitmqctl -q status >/dev/null 2>&1; then
    # The node is down: enable them in its plugins file, for when it starts.
    rabbitmq-plugins enable --offline "${RABBITMQ_PLUGINS[@]}"
    echo "rabbitmq: not running; ${RABBITMQ_PLUGINS[*]} enabled for its next start"
    return 0
  fi
  # `enable` of an enabled plugin changes nothing and succeeds.
  rabbitmq-plugins -q enable "${RABBITMQ_PLUGINS[@]}"
  for _ in $(seq "$MANAGEMENT_WAIT_S"); do
    if curl -fsS -o /dev/null -u guest:guest "$MANAGEMENT_API/api/overview" 2>/dev/null; then
      echo "rabbitmq: ${RABBITMQ_PLUGINS[*]} enabled; the management API answers at $MANAGEMENT_API"
      return 0
    fi
    sleep 1
  done
  echo "rabbitmq: the management API does not answer at $MANAGEMENT_API after ${MANAGEMENT_WAIT_S}s" >&2
  return 1
}

install_sidekiq() {
  if command -v sidekiq >/dev/null 2>&1; then
    echo "sidekiq: already installed ($(command -v sidekiq))"
    return 0
  fi
  if ! apt-get install -y ruby-sidekiq; then
    apt-get update
    apt-get install -y ruby-sidekiq
  fi
  echo "sidekiq: installed ($(command -v sidekiq))"
}

enable_rabbitmq_plugins
# `--rabbitmq`: the plugins only (what `cargo test` enables for itself on a new machine).
if [ "${1:-}" = "--rabbitmq" ]; then
  exit 0
fi
install_sidekiq
