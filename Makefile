# deltatune: the two commands of the README, and the rest.
#   make demo    set up, build, run the main job
#   make test    set up, build, run every test (what CI runs)
#   make test-torch-latest   the same against the newest torch wheel from PyPI
SHELL := /bin/bash
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= $(shell nproc)
CMAKE_FLAGS ?=
DELTATUNE_HOME ?= $(HOME)/.cache/deltatune
# GLUE data: GLUE_DIR from the environment, else the shared copy beside the checkout.
GLUE_DIR ?= $(abspath $(firstword $(wildcard ../shared/data/glue)))
export DELTATUNE_HOME GLUE_DIR

DELTATUNE := $(BUILD_DIR)/deltatune

.PHONY: all setup configure build build-cuda test test-torch-latest test-sanitize fuzz demo bench fixtures format clean gpu-prepare

all: build

setup:
	@scripts/setup.sh

configure: setup
	@if [ ! -f $(BUILD_DIR)/CMakeCache.txt ]; then \
	  cmake -S . -B $(BUILD_DIR) -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS); \
	fi

build: configure
	@cmake --build $(BUILD_DIR) -j$(JOBS)

test: build
	@scripts/setup.sh test-packages
	@cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

# The same tests built against the newest LibTorch from PyPI: the pip torch wheel
# (~3 GB with its CUDA libraries) in $(DELTATUNE_HOME)/venv-latest, pinned in
# tools/requirements-latest.txt. Not part of `make test`.
TORCH_LATEST_BUILD_DIR ?= build-torch-latest
test-torch-latest: setup
	@PY=$$(tools/setup_python.sh latest) \
	  && prefix=$$($$PY -c 'import torch; print(torch.utils.cmake_prefix_path)') \
	  && cmake -S . -B $(TORCH_LATEST_BUILD_DIR) -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	       -DCMAKE_PREFIX_PATH="$$prefix" $(CMAKE_FLAGS)
	@cmake --build $(TORCH_LATEST_BUILD_DIR) -j$(JOBS)
	@scripts/setup.sh test-packages
	@cd $(TORCH_LATEST_BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

# A CUDA build (--device cuda): against the pip torch wheel's LibTorch (CUDA
# 13), whose CMake config needs nvcc (the CUDA toolkit); fails unless that
# LibTorch has CUDA. Compiles and links on a machine without a GPU; the GPU
# checks themselves are scripts/gpu-check.sh on a machine with one.
CUDA_BUILD_DIR ?= build-cuda
build-cuda: setup
	@PY=$$(tools/setup_python.sh latest) \
	  && prefix=$$($$PY -c 'import torch; print(torch.utils.cmake_prefix_path)') \
	  && cmake -S . -B $(CUDA_BUILD_DIR) -G "Unix Makefiles" -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) \
	       -DDELTATUNE_REQUIRE_CUDA=ON -DCMAKE_PREFIX_PATH="$$prefix" $(CMAKE_FLAGS)
	@cmake --build $(CUDA_BUILD_DIR) -j$(JOBS)

# What scripts/gpu-check.sh needs on a GPU machine without network: .gpu-carry/.
gpu-prepare:
	@scripts/gpu-prepare.sh

# ASan + UBSan, and libFuzzer: one clang build in build-sanitize/ (docs/RELIABILITY.md).
#   make test-sanitize                   every unit test under the sanitizers
#   make test-sanitize SANITIZE_TESTS=R  only the tests matching the regex R
#   make fuzz FUZZ_SECONDS=300           each fuzz target for that long
SANITIZE_BUILD_DIR ?= build-sanitize
SANITIZE_TESTS ?=
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
configure-sanitize: setup
	@scripts/setup.sh sanitizers
	@if [ ! -f $(SANITIZE_BUILD_DIR)/CMakeCache.txt ]; then \
	  CC=clang CXX=clang++ cmake -S . -B $(SANITIZE_BUILD_DIR) -G "Unix Makefiles" \
	    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDELTATUNE_SANITIZE=ON -DDELTATUNE_FUZZ=ON \
	    -DDELTATUNE_BUILD_BENCH=OFF $(CMAKE_FLAGS); \
	fi

test-sanitize: configure-sanitize
	@scripts/setup.sh test-packages
	@cmake --build $(SANITIZE_BUILD_DIR) -j$(JOBS)
	@cd $(SANITIZE_BUILD_DIR) && ASAN_OPTIONS=detect_leaks=0:allocator_may_return_null=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  ctest --output-on-failure -j$(JOBS) $(if $(SANITIZE_TESTS),-R '$(SANITIZE_TESTS)')

fuzz: configure-sanitize
	@cmake --build $(SANITIZE_BUILD_DIR) -j$(JOBS) --target \
	  $(addsuffix _fuzz,$(or $(FUZZ_TARGETS),safetensors torch_pickle config tokenizer dataset delta predict_request))
	@scripts/fuzz.sh $(SANITIZE_BUILD_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

# BitFit on a 4,000-sentence sample of SST-2 (one epoch), then the dev metric and the delta's size.
DEMO_FLAGS ?= --task SST-2 --method bitfit --max-train-samples 4000 --epochs 1 --max-length 64
demo: build
	@$(DELTATUNE) train $(DEMO_FLAGS) --out runs/demo
	@$(DELTATUNE) predict --delta runs/demo/delta --input examples/sst2_inputs.tsv
	@$(DELTATUNE) eval --delta runs/demo/delta

# Encoder forward throughput, deltatune vs HF Transformers, in one run.
bench: build
	@bench/run_forward.sh $(BUILD_DIR)

# Regenerates tests/fixtures with the reference Python stack (never needed to build or test).
fixtures:
	@PY=$$(tools/setup_python.sh) && $$PY tools/make_fixtures.py --glue-dir "$(GLUE_DIR)" --out tests/fixtures \
	  && $$PY tools/make_torch_bin_fixture.py && $$PY tools/check_fixtures.py

format:
	@clang-format -i $$(git ls-files '*.h' '*.cpp')

clean:
	@rm -rf $(BUILD_DIR)
