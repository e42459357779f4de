# kexue: `make demo` runs the reproductions on the embedded defaults; `make test` runs the test suite.
# Both create .venv with the CPU build of PyTorch first (a plain `torch` requirement would pull CUDA).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.kexue-installed
export OMP_NUM_THREADS ?= 1
export MPLBACKEND ?= Agg
export KEXUE_REQUIRE_COMPILED ?= 1

.PHONY: setup demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(wildcard setup.py)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev,repro]' $(TORCH)
	touch $(STAMP)

demo: setup
	$(BIN)/kexue reproduce --out report

test: setup
	$(BIN)/python -m pytest -n auto --durations=15 -q

bench: setup
	$(BIN)/python -m pip install --quiet -e '.[bench]' $(TORCH)
	@# The original BytePiece needs pyahocorasick built with bytes support; its benchmark rows are skipped without it.
	-$(BIN)/python -m pip install --quiet Cython setuptools wheel tqdm \
	  && AHOCORASICK_BYTES=1 $(BIN)/python -m pip install --quiet --no-binary pyahocorasick pyahocorasick==2.3.1 \
	  && $(BIN)/python -m pip install --quiet --no-build-isolation bytepiece==0.6.3
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b --quick || exit 1; done

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) report build *.egg-info src/*.egg-info
