# Every target creates the virtualenv it needs; reruns are quick (a stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SOURCE ?= $(if $(wildcard ../shared/data/chestxray8/*.png),../shared/data/chestxray8,)
OUT ?= out

.PHONY: install run test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job on the embedded default: the real ChestX-ray8 scans when ../shared
# is beside the checkout, generated phantoms otherwise.
run: install
	$(BIN)/xray demo --out $(OUT) $(if $(SOURCE),--source $(SOURCE),)

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install
	$(BIN)/python benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
