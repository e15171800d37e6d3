# The two entry points the README promises: `make demo` and `make test`.
# Both create .venv on first use and install netstorm into it (editable, with dev tools).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.1"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/netstorm topo show netstorm9
	$(BIN)/netstorm compare --topology netstorm9 --model resnet50

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/netstorm bench --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
