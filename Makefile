# Every target creates the virtualenv it needs; reruns are quick (a stamp file).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH_STAMP := $(VENV)/.torch-stamp
# The lock files pin every package (with hashes) for Python 3.11 on x86-64 Linux.
LOCK_FLAGS := --python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes -q
SOURCE ?= $(if $(wildcard ../shared/data/chestxray8/*.png),../shared/data/chestxray8,)
OUT ?= out

.PHONY: install install-torch run test lint format bench lock image clean

install: $(STAMP)

# Everything from the lock file (hashes checked), then the project itself.
$(STAMP): pyproject.toml requirements/lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r requirements/lock.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

# PyTorch, MONAI and onnxscript for `xray train --arch densenet121` and its tests.
install-torch: $(TORCH_STAMP)

$(TORCH_STAMP): $(STAMP) requirements/torch.txt
	$(BIN)/python -m pip install -q -r requirements/torch.txt
	touch $(TORCH_STAMP)

# Refresh the lock files after a change of pyproject.toml's dependencies.
lock: install
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra test $(LOCK_FLAGS) -o requirements/lock.txt
	$(BIN)/uv pip compile pyproject.toml --extra dicom --extra classify --extra viz \
		$(LOCK_FLAGS) -o requirements/image.txt

# The main job on the embedded default: the real ChestX-ray8 scans when ../shared
# is beside the checkout, generated phantoms otherwise.
run: install
	$(BIN)/xray demo --out $(OUT) $(if $(SOURCE),--source $(SOURCE),)

test: install install-torch
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/deptry .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The container image (deploy/Dockerfile) as xray-pipeline:latest, with podman or docker;
# with no image registry in reach, on a Debian base made here with mmdebstrap.
image:
	deploy/build-image.sh

bench: install
	$(BIN)/python benchmarks/bench_ops.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
