#!/usr/bin/env bash
# Makes sure the remote backends the conformance suite runs against are up on this machine, starting
# them when they are not: RabbitMQ on 127.0.0.1:5672 (Debian's rabbitmq-server, guest/guest) and NATS
# with JetStream on 127.0.0.1:4222 (Debian's nats-server). Installs neither when it is missing: it says
# so and fails, since a test that needs a service must not pass without it. Idempotent.
set -euo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port, name, seconds
  for _ in $(seq 1 "$3"); do
    if up "$1"; then echo "$2: up on 127.0.0.1:$1"; return 0; fi
    sleep 1
  done
  echo "$2: not answering on 127.0.0.1:$1 after $3 s" >&2
  return 1
}

if ! up 5672; then
  command -v rabbitmq-server >/dev/null || { echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }
  echo "RabbitMQ: not running, starting it"
  service rabbitmq-server start || rabbitmqctl start_app || true
fi
wait_for 5672 RabbitMQ 60
# A restart test (tests/remote_restart.rs) stops and starts the app: wait until it has fully started.
rabbitmqctl await_startup >/dev/null 2>&1 || true

if ! up 4222; then
  command -v nats-server >/dev/null || { echo "nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
  echo "NATS: not running, starting it with JetStream"
  mkdir -p /var/lib/nats-server
  nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server >>/var/log/nats-server.log 2>&1 &
fi
wait_for 4222 NATS 30
