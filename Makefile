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
	$(BIN)/python -m pip install --quiet -e ".[dev,notebooks]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p out
	$(BIN)/netstorm topo show netstorm9 --draw out/netstorm9.png
	$(BIN)/netstorm compare --topology netstorm9 --model resnet50
	$(BIN)/netstorm plan --topology netstorm9 --model resnet50 --planner treepack \
		--draw out/treepack-plan.png
	$(BIN)/netstorm sim --topology netstorm9 --model resnet50 --planner ps,netstorm,treepack \
		--duration 30min --dynamics redraw:180s:20Mbit/s:155Mbit/s:1 --plot out/iterations.png
	$(BIN)/netstorm run --topology netstorm9 --planner ps,netstorm,treepack --time-scale 2 \
		--iterations 30 --dynamics redraw:180s:20Mbit/s:155Mbit/s:1 --target 0.93 \
		--plot out/time-to-accuracy.png --log-dir out/run
	@echo "drawings and plots are in out/, the runtime's per-site logs in out/run/"

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy netstorm sim kernels runtime

bench: $(STAMP)
	$(BIN)/netstorm bench --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
