# reviewflow: `make run` sets up and runs the main job; `make test` runs the tests (`make test-fast`: the quick
# subset to run before each commit).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SOURCE  ?= ../shared/data/imdb/train.parquet
UNSUP   ?= ../shared/data/imdb/unsup.parquet
RUN_ARGS ?= --also $(UNSUP) --group-col movie_id

.PHONY: setup run lint test test-fast bench clean

$(BIN)/reviewflow: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(BIN)/reviewflow

run: setup
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/reviewflow run --source $(SOURCE) $(RUN_ARGS)

# the import contracts of pyproject.toml ([tool.importlinter]): stages import one way, pipeline never imports prefect
lint: setup
	$(BIN)/lint-imports

# pytest exits non-zero on failures AND on 5 "no tests collected" (a -m / -k that matches nothing): both fail the
# target and CI; PYTEST_ARGS passes more options (e.g. make test-fast PYTEST_ARGS="-x tests/test_sql.py")
PYTEST  := PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q

# the whole suite (CI, the README's command), with the 25 slowest tests listed at the end; on 2 pytest-xdist
# workers (TEST_WORKERS=0: one process): 8.5 min -> measured in docs/benchmarks.md "test suite"
TEST_WORKERS ?= 2
test: lint
	$(PYTEST) -n $(TEST_WORKERS) --durations=25 $(PYTEST_ARGS)

# before every commit: the pure-library tests (no servers, no Python child processes, no Prefect flows, no Dask,
# no torchrun, nothing marked slow), under 2 minutes on 2 cores. Markers: pyproject.toml, tests/conftest.py.
# On 2 pytest-xdist workers (FAST_WORKERS=0: one process): measured faster on the 2-core machine.
FAST_MARKS ?= not (server or subprocess or prefect or dask or ddp or slow)
FAST_WORKERS ?= 2
test-fast: lint
	$(PYTEST) -m "$(FAST_MARKS)" -n $(FAST_WORKERS) --durations=10 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/score.py

clean:
	rm -rf $(VENV) build *.egg-info
