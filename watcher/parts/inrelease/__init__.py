"""Plain-Python files that run inside a release, under the release's own interpreter and
venv: they import Django and the site, never watcher. The parts that run them read each
file and exec it in `manage.py shell -c`, or (`warm_gate.py`) run it as a script of the
venv's python; this package only ships them in the wheel."""
