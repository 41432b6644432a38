# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install, run the main job (`mlflow run .`) on the embedded store
#   make test   create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
TRANSFER_CORE_DATA ?= $(abspath ../shared/data)
TRANSFER_CORE_CACHE ?= $(abspath .cache)
MLFLOW_TRACKING_URI ?= sqlite:///$(abspath mlruns)/mlflow.db
export TRANSFER_CORE_DATA TRANSFER_CORE_CACHE MLFLOW_TRACKING_URI

.PHONY: install run test ui

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,ray,auth]'
	touch $@

install: $(VENV)/.installed

# `mlflow run` into the tool's experiment, made first by the tool (artifacts beside the store), never Default.
EXPERIMENT ?= transfer_core

run: install
	mkdir -p mlruns
	@$(VENV)/bin/transfer-core experiment $(EXPERIMENT) > /dev/null
	PATH=$(abspath $(VENV))/bin:$$PATH mlflow run . --env-manager local --experiment-name $(EXPERIMENT) $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# One UI worker per two cores (at most 4): MLflow's default of 4 workers took about 45 s to
# answer on 2 cores. The links open each experiment in Model training mode.
UI_WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, min(4, (os.cpu_count() or 2) // 2)))")

ui: install
	@$(VENV)/bin/transfer-core links
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root $(abspath mlruns) \
		--workers $(UI_WORKERS)
