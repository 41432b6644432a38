# Two commands do all the set-up on a fresh machine:
#   make run    create .venv, install the package, run the main job (`mlflow run .`) on the embedded store
#   make test   create .venv, install the package with what its tests start (Ray, MLflow's auth server), run them
#   make ui     the MLflow UI over the embedded store, opening on the study (docs/ui.md)
PYTHON ?= python3
VENV ?= .venv
TRANSFER_CORE_DATA ?= $(abspath ../shared/data)
TRANSFER_CORE_CACHE ?= $(abspath .cache)
MLFLOW_TRACKING_URI ?= sqlite:///$(abspath mlruns)/mlflow.db
export TRANSFER_CORE_DATA TRANSFER_CORE_CACHE MLFLOW_TRACKING_URI

.PHONY: install install-test run test ui

# The package alone: what `make run` and `make ui` use. The cluster and auth extras (Ray,
# mlflow[auth]) come only with the tests, which start a Ray instance and a basic-auth server.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[test,ray,auth]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# `mlflow run` into the tool's experiment, made first by the tool (artifacts beside the store), never Default.
EXPERIMENT ?= transfer_core

run: install
	mkdir -p mlruns
	@$(VENV)/bin/transfer-core experiment $(EXPERIMENT) > /dev/null
	PATH=$(abspath $(VENV))/bin:$$PATH mlflow run . --env-manager local --experiment-name $(EXPERIMENT) $(ARGS)

test: install-test
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# `transfer-core ui` prints the links, then serves MLflow (without its job runner) so that the
# bare address opens on the study in Model training mode; one worker per two cores (at most 4).
ui: install
	$(VENV)/bin/transfer-core ui --experiment $(EXPERIMENT) $(ARGS)
