# The two commands the README opens with: `make demo` and `make test`. Each sets everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch and torchvision are installed first with exact pins: an open range would pull several GB.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[test,s3]"
	touch $(STAMP)

# The main job on the embedded default: local Ray, photos shipped inside installed packages, tiny models.
demo: $(STAMP)
	$(BIN)/python preprocess/build_shards.py --models tiny --out demo_out --overwrite
	$(BIN)/mcld-data show demo_out --index 0 -o demo_out/sheet.png
	$(BIN)/mcld-data summary demo_out

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python -m shards.bench

clean:
	rm -rf demo_out demo_run .pytest_cache

# The one-shot GPU check (README "Benchmarks"): parity and throughput on this machine's GPU, one JSON.
# Without the venv: PYTHONPATH=. python -m tools.gpu_check -o gpu_check_out --device cuda
.PHONY: gpu-check
gpu-check: $(STAMP)
	PYTHONPATH=. $(BIN)/python -m tools.gpu_check -o gpu_check_out --device cuda
