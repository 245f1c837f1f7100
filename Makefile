# reviewflow: `make run` sets up and runs the main job; `make test` runs the tests.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
SOURCE  ?= ../shared/data/imdb/train.parquet
UNSUP   ?= ../shared/data/imdb/unsup.parquet
RUN_ARGS ?= --also $(UNSUP) --group-col movie_id

.PHONY: setup run lint test bench clean

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

test: lint
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/score.py

clean:
	rm -rf $(VENV) build *.egg-info
