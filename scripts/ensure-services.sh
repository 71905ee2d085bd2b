#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) answer; start them if not.
# Used by .ci/run and `make test`; a no-op where they already run.
set -euo pipefail

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq postgresql >/dev/null
  fi
  ver=$(ls /etc/postgresql | sort -V | tail -1)
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
  for _ in $(seq 1 30); do pg_up && break; sleep 1; done
fi
pg_up || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }

if ! redis_up; then
  command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 30); do redis_up && break; sleep 1; done
fi
redis_up || { echo "Redis did not come up on 127.0.0.1:6379" >&2; exit 1; }

# The tests connect as postgres over TCP with trust auth (the machine's default setup).
psql -h 127.0.0.1 -U postgres -tAc "select 1" >/dev/null
echo "services: PostgreSQL and Redis are up"

# promtool (Debian's `prometheus` package) checks deploy/prometheus/alerts.yml in tests/ops/test_metrics.py;
# without it that test skips, saying so.
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } \
      || echo "promtool: could not install the prometheus package; the alert-rule test will skip" >&2
  else
    echo "promtool not found (apt-get install prometheus); the alert-rule test will skip" >&2
  fi
fi
