"""Plain-Python files that run inside a release, under the release's own interpreter and
venv (through `manage.py shell -c`): they import Django and the site, never watcher. The
parts that run them read each file and exec it; this package only ships them in the wheel."""
