# The entry points of the project: `make test`, `make chaos` and `make bench`.
# Each creates .venv from the committed lock file when it is absent or older than the lock.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV_LOCK ?= .venv.lock

.PHONY: up test thorough lint chaos bench bench-full lock clean

# The install runs under a lock: `make up` and `make test` started together in two terminals
# must not both pip into the same new venv (pip then fails to uninstall its own half-written
# files). The second waits, finds the stamp fresh, and reuses the venv.
$(STAMP): requirements.lock pyproject.toml
	@if command -v flock >/dev/null; then flock $(VENV_LOCK) $(MAKE) --no-print-directory venv-install; \
	else $(PYTHON) -c 'import fcntl, subprocess, sys; f = open(sys.argv[1], "a"); fcntl.flock(f, fcntl.LOCK_EX); sys.exit(subprocess.call(sys.argv[2:]))' \
		$(VENV_LOCK) $(MAKE) --no-print-directory venv-install; fi

.PHONY: venv-install
venv-install:
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt requirements.lock ] && [ $(STAMP) -nt pyproject.toml ]; \
		then echo "$(VENV) is up to date (installed meanwhile by another make)"; exit 0; fi; \
	set -e; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install -q --upgrade pip; \
	$(PY) -m pip install -q --require-hashes -r requirements.lock; \
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .; \
	touch $(STAMP)

# A single-machine cluster: control plane + one local agent, data in ~/.hakuriver.
# Pass options through ARGS, e.g. make up ARGS="--port 9000 --data-dir /tmp/hr".
up: $(STAMP)
	$(VENV)/bin/hakuriver up $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy

# Isolated tests run on several workers (most wait on real processes, so more workers than
# cores); one line per test file as it finishes (tests/conftest.py).
PYTEST_WORKERS ?= 4
test: lint
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS)

# The property tests with many more examples (tests/support/thorough.py).
thorough: $(STAMP)
	HAKURIVER_THOROUGH=1 $(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) tests/projections tests/replay_tools tests/control_plane tests/cli/test_hakuriver_render.py \
		tests/cli/test_hakuriver_e2e.py tests/e2e/test_rest_fuzz.py tests/e2e/test_link_fuzz.py

# The long fault variants (tests/chaos, marker chaos_long: 1000-task crashes, long partitions,
# a slow disk), kept out of `make test`; as root (netns, mounts), else they skip and say why.
# docs/chaos.md says what each does and what it needs (python3-fusepy for the slow disk).
CHAOS_WORKERS ?= 1
chaos: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -n $(CHAOS_WORKERS) -m chaos_long tests/chaos

bench: $(STAMP)
	$(PY) tests/benchmarks/run.py

bench-full: $(STAMP)
	$(PY) tests/benchmarks/run.py --full

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	uv pip compile pyproject.toml --extra dev --extra gpu --generate-hashes --universal --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV)
