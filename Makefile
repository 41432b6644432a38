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

run: install
	mkdir -p mlruns
	PATH=$(abspath $(VENV))/bin:$$PATH mlflow run . --env-manager local $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI) --default-artifact-root $(abspath mlruns)
