# The two entry points: `make run` and `make test`. Everything they need is installed from here.
# The interpreter the virtualenv is made from: scripts/pick-python says which and why.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell bash scripts/pick-python)
endif
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The gateway bench's extra (ViSQOL, scipy: ~100 MB): for the tests of its instrument and the bench, not `make run`.
BENCH_STAMP := $(VENV)/.bench-stamp
MADE_BY := $(VENV)/.made-by

# A virtualenv made from another interpreter than the chosen one is made again.
ifneq ($(shell cat $(MADE_BY) 2>/dev/null),$(PYTHON))
.PHONY: $(STAMP)
endif

.PHONY: run test lint typecheck system-deps bench bench-gateway clean

$(STAMP): pyproject.toml
	@if [ "$$(cat $(MADE_BY) 2>/dev/null)" != "$(PYTHON)" ]; then \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) && echo "$(PYTHON)" > $(MADE_BY); fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $@

run: $(STAMP)
	@mkdir -p var
	$(BIN)/dialbridge serve

system-deps:
	@bash scripts/install-system-deps

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

test: $(STAMP) $(BENCH_STAMP) system-deps lint typecheck
	@bash scripts/run-tests $(BIN)

bench: $(STAMP) system-deps
	$(BIN)/python bench/webhooks.py

# The gateway's latency, speech quality and cost (as root: it runs in a private network namespace); ~4 minutes.
bench-gateway: $(BENCH_STAMP) system-deps
	$(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
