#!/usr/bin/env bash
# Install the Debian packages the tests, demo and benchmarks use, where they are missing.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v curl >/dev/null || need+=(curl)
# The full-stack example and its test: MariaDB, Redis, and what compiles mysqlclient.
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v cc >/dev/null || need+=(build-essential)
pkg-config --exists libmariadb 2>/dev/null || need+=(libmariadb-dev)
command -v openssl >/dev/null || need+=(openssl)  # self-signed cert for the STARTTLS test
command -v wrk >/dev/null || need+=(wrk)  # load generator for `make bench`
command -v gpg >/dev/null || need+=(gnupg)  # signed-commit tests: real gpg keys
command -v ssh-keygen >/dev/null || need+=(openssh-client)  # ssh-signed commits
command -v setpriv >/dev/null || need+=(util-linux)  # fleet: migrate dies with its watcher
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${need[*]} (run as root, or install them)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts services on install; the tests start their own on loopback.
for svc in nginx ssh mariadb redis-server; do
  (service "$svc" stop >/dev/null 2>&1 || true)
done
