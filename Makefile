# Two commands do everything on a fresh machine (see README):
#   make compare   # install, then run the main job: tgrow compare --preset quick
#   make test      # install, then run the test suite
# Installs into ./.venv. TORCH selects the PyTorch requirement (a CPU build is all the tests need).

PYTHON ?= python3
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test compare lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -n 2 -q -p no:benchmark

compare: install
	$(BIN)/tgrow compare --preset quick --out runs/compare-quick

lint: install
	$(BIN)/python -m ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
