#!/usr/bin/env bash
# Installs what `tubemail bench jobs --peers` runs against and does not install itself: Sidekiq 6.4
# (Debian's ruby-sidekiq, which brings Ruby). Idempotent: does nothing when `sidekiq` is already there.
# Redis, which Sidekiq and apalis keep their jobs in, is this machine's server at 127.0.0.1:6379.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if command -v sidekiq >/dev/null 2>&1; then
  echo "sidekiq: already installed ($(command -v sidekiq))"
  exit 0
fi
if ! apt-get install -y ruby-sidekiq; then
  apt-get update
  apt-get install -y ruby-sidekiq
fi
echo "sidekiq: installed ($(command -v sidekiq))"
