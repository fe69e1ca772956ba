# `make demo` and `make test` bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test fuzz install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/outbound demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Free exploration of the event API by schemathesis (random seed, printed), for FUZZ_SECONDS.
FUZZ_SECONDS ?= 900
fuzz: $(STAMP)
	$(BIN)/python tests/fuzz_api.py --explore --max-examples 100000 --max-time $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) *.egg-info outbound-demo.db*
