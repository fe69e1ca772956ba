# `make demo` and `make test` bootstrap .venv themselves on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test fuzz fuzz-properties fuzz-api install clean

FUZZ_SECONDS ?= 600
FUZZ_TESTS ?= tests/test_hostile.py tests/test_one_engine.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/outbound demo

test: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# `make fuzz`: free exploration, FUZZ_SECONDS for each half; a failure stops with what reproduces it
# (add it to the test as an @example).
fuzz: fuzz-properties fuzz-api

# Property tests with a fresh random seed each round until FUZZ_SECONDS have passed.
fuzz-properties: $(STAMP)
	end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do round=$$((round + 1)); echo "fuzz round $$round"; \
	  HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -p no:cacheprovider $(FUZZ_TESTS) || exit 1; done

# Free exploration of the event API by schemathesis (random seed, printed), for FUZZ_SECONDS.
fuzz-api: $(STAMP)
	$(BIN)/python tests/fuzz_api.py --explore --max-examples 100000 --max-time $(FUZZ_SECONDS)

clean:
	rm -rf $(VENV) *.egg-info outbound-demo.db*
