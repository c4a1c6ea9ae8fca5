# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
WHEELHOUSE := build/wheelhouse
# Both example apps' requirements go into one cache, built by one `pip wheel` run (mysqlclient
# is compiled there, against libmariadb-dev, once).
REQS := examples/mysite/requirements.txt examples/fullstack/requirements.txt
# Four workers on two cores, one test file each at a time: much of a test's time is spent
# waiting on real servers (Gunicorn booting, supervisord's startsecs, timeouts), not on the
# CPU. --no-loadscope-reorder keeps the collection order, which tests/conftest.py sorts
# longest file first (xdist would otherwise start the files with the most tests first).
PYTEST_ARGS ?= -n 4 --dist loadfile --no-loadscope-reorder

.PHONY: help install system-deps wheelhouse lint typecheck pytest test demo demo-stop bench clean \
	dist shipped

help:
	@echo "make test      install dev deps, fill the wheel cache, run ruff, mypy and pytest"
	@echo "make demo      end-to-end demo on a local sandbox (make demo-stop to clean up)"
	@echo "make bench     benchmarks against the baseline script; writes BENCHMARKS.md"
	@echo "make dist      build the sdist and the wheel into dist/ (pip install dist/*.whl)"
	@echo "make shipped   re-render supervisor/, systemd/, examples/nginx/, examples/watcher.toml"

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests need (git, a real sshd, nginx, ...); installed only when missing.
system-deps:
	@bash scripts/system-deps.sh

# The example app's wheels, built once and reused by every venv the tests and demo build.
$(WHEELHOUSE)/.complete: $(REQS) | $(VENV)/.installed
	mkdir -p $(WHEELHOUSE)
	$(BIN)/pip wheel -q --disable-pip-version-check $(addprefix -r ,$(REQS)) -w $(WHEELHOUSE)
	# Django 4.2 too: the migration-class tests also run on the oldest Django supported.
	$(BIN)/pip download -q --disable-pip-version-check --no-deps 'Django>=4.2,<4.3' -d $(WHEELHOUSE)
	touch $@

wheelhouse: $(WHEELHOUSE)/.complete

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

# watcher is byte-compiled first, as a wheel install is: with PYTHONDONTWRITEBYTECODE set,
# every `python -m watcher` the tests run would otherwise compile it again (~0.14 s of CPU).
# Not the templates `watcher init` renders nor the files run inside a release: data, not modules.
pytest: install wheelhouse
	$(BIN)/python -m compileall -q -x '/(templates|inrelease)/' watcher
	WATCHER_TEST_WHEELHOUSE=$(CURDIR)/$(WHEELHOUSE) $(BIN)/pytest $(PYTEST_ARGS)

test: system-deps install wheelhouse lint typecheck pytest

demo: system-deps install wheelhouse
	$(BIN)/python examples/demo/demo.py start

demo-stop:
	-$(BIN)/python examples/demo/demo.py stop

bench: system-deps install wheelhouse
	$(BIN)/python benchmarks/run.py

# The sdist and the wheel, built in isolation: uv fetches the setuptools that [build-system]
# asks for (>=77, for the SPDX license string). Without PYTHONDONTWRITEBYTECODE, which makes
# setuptools print a warning per build step. tests/test_dist.py runs this target.
DIST ?= dist
UV ?= $(BIN)/uv
dist: $(UV)
	rm -rf $(DIST) *.egg-info
	env -u PYTHONDONTWRITEBYTECODE $(UV) build --out-dir $(DIST) .
	rm -rf *.egg-info
	@ls $(DIST)

$(BIN)/uv: | $(VENV)/.installed

# The checked-in process configs are rendered from watcher/init/templates (the files `watcher
# init` writes): edit a template, then run this. tests/test_init.py fails when one is stale.
shipped: | $(BIN)/python
	$(BIN)/python scripts/shipped.py

clean: demo-stop
	rm -rf build .venv dist
