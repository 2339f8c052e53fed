# SpineSeg developer entry points. `make demo` and `make test` are the quick start.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/pip install -c constraints.txt
DEMO    ?= demo
export OMP_NUM_THREADS ?= 2

.PHONY: venv test lint demo docs benchmark container-test clean

# torch first and pinned (the CPU wheel here); the constraints file keeps every later
# install (nnunetv2 -> timm -> torchvision) from swapping it for a CUDA build. One stamp per
# set of extras, so that `make demo` (runtime only) never hides a missing test install.
install = test -x $(BIN)/python || $(PY) -m venv $(VENV); \
	$(BIN)/pip install -q "torch==2.13.0" && $(PIP) -q -e ".$(1)" && touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt
	$(call install,[test])

$(VENV)/.installed-run: pyproject.toml constraints.txt
	$(call install,)

$(VENV)/.installed-docs: pyproject.toml constraints.txt
	$(call install,[docs])

venv: $(VENV)/.installed-test

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache  # the layer contracts in pyproject.toml

test: venv lint
	$(BIN)/python -m pytest -q -ra

demo: $(VENV)/.installed-run
	rm -rf $(DEMO)
	$(BIN)/spineseg phantoms $(DEMO)/bids --subjects 3
	$(BIN)/spineseg $(DEMO)/bids $(DEMO)/out participant --weights demo --device cpu \
	    --work-dir $(DEMO)/work
	$(BIN)/spineseg $(DEMO)/bids $(DEMO)/out group
	@echo ""
	@echo "Reports: $(abspath $(DEMO)/out)/group.html and $(abspath $(DEMO)/out)/sub-*.html"

# The documentation site: Sphinx, warnings are errors, offline (no intersphinx).
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html
	@echo "Documentation: $(abspath docs/_build/html)/index.html"

benchmark: venv
	$(BIN)/python benchmarks/demo_accuracy.py

container-test:
	bash tests/container/run_container_test.sh

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache docs/_build
