# Two commands for a newcomer: `make run` and `make test`. Both bootstrap everything they need
# (.venv, dependencies, generated code); stamp files keep re-runs fast.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEPS_STAMP := $(VENV)/.deps-installed
GEN_STAMP := build/.generated
PROTOS := $(shell find protos -name '*.proto')

.PHONY: run test gen lint-protos envoy-config clean

run: $(GEN_STAMP)
	$(BIN)/posmesh run $(ARGS)

test: $(GEN_STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

gen: $(DEPS_STAMP)
	$(BIN)/python -m stack.codegen
	@touch $(GEN_STAMP)

# The benchmark (docs/bench.md): starts its own stack; `make bench ARGS=--quick` in under 2 min.
.PHONY: bench
bench: $(GEN_STAMP)
	$(BIN)/python -m bench $(ARGS)

envoy-config: $(GEN_STAMP)
	$(BIN)/posmesh envoy-config

# buf cannot reach the Buf Schema Registry from here: googleapis' protos are copied from
# site-packages into build/googleapis, the second module of buf.yaml.
lint-protos: $(DEPS_STAMP)
	$(BIN)/python -m stack.codegen --googleapis-into build/googleapis
	npx --yes @bufbuild/buf lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEPS_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(GEN_STAMP): $(DEPS_STAMP) $(PROTOS)
	$(BIN)/python -m stack.codegen
	@mkdir -p build && touch $@

# Generated code and the local venv; the data dir (.posmesh/: database, keys) is kept.
clean:
	rm -rf $(VENV) build posmesh/auth/v1 posmesh/staff/v1 posmesh/orders/v1 posmesh/realtime/v1 posmesh/health/v1 \
		posmesh/api/v1
