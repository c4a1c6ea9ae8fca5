#!/usr/bin/env bash
# The seed's way to deploy, timed beside watcher by benchmarks/run.py: update the work tree
# in place, install requirements into its one venv, migrate, collect static, restart.
# pip reads the same wheel cache as watcher's venv builds, so neither downloads.
#
# usage: baseline.sh APP_DIR SUPERVISORD_CONF PROGRAM WHEELHOUSE
set -euo pipefail
app=$1 conf=$2 program=$3 wheels=$4
supervisorctl=${SUPERVISORCTL:-supervisorctl}
cd "$app"
git pull -q --ff-only \
  && .venv/bin/pip install -q --disable-pip-version-check --no-index --find-links "$wheels" \
       -r requirements.txt \
  && .venv/bin/python manage.py migrate --noinput \
  && .venv/bin/python manage.py collectstatic --noinput \
  && "$supervisorctl" -c "$conf" restart "$program"
