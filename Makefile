# The quick start is `make demo` then `make test`; both share one virtual environment.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The strict editable install links each module file into build/__editable__.*: adding or removing
# a module needs a reinstall, so the list of modules is a prerequisite of the stamp.
MODULES := $(VENV)/.modules

.PHONY: install demo test lint docs bench-accuracy clean FORCE

install: $(STAMP)

$(MODULES): FORCE
	@mkdir -p $(VENV)
	@find ncnc trainer exporter scorer triton_kernels -name '*.py' | sort > $@.new
	@if cmp -s $@.new $@; then rm $@.new; else mv $@.new $@; fi

# torch is pinned to the CPU build that installs from a local file; an unpinned
# torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml $(MODULES)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[train,dev,ray,sign,tune]' --config-settings editable_mode=strict
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py demo_output

# Two workers, one per core; a test file stays on one worker (its module fixtures are built once).
test: lint
	$(PY) -m pytest -q -n 2 --dist loadfile

# ruff, and the layer contracts of pyproject.toml ([tool.importlinter]).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# The README's CLI reference is rendered from the commands' --help (tests/ncnc/test_cli_reference.py
# fails when it is stale).
docs: $(STAMP)
	$(PY) -m ncnc.cli.reference --write README.md

bench-accuracy: $(STAMP)
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info
