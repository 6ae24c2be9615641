# difflsq — `make demo` and `make test` work on a fresh Debian 12 machine (as root): they install
# the Debian packages the project needs, configure, build and run.
SHELL := /bin/bash
BUILD ?= build
BUILD_SAN ?= build-asan
BUILD_FUZZ ?= build-fuzz
JOBS ?= $(shell nproc)
PYTHON := /usr/bin/python3
FUZZ_SECONDS ?= 60

DEBS := build-essential cmake git pkg-config libeigen3-dev doctest-dev pybind11-dev libcli11-dev \
        libstb-dev libpng-dev zlib1g-dev python3 python3-dev python3-numpy python3-scipy \
        python3-pytest python3-torch libtorch-dev libbenchmark-dev libceres-dev clang \
        libclang-rt-14-dev

CMAKE_FLAGS := -DPython3_EXECUTABLE=$(PYTHON) -DCMAKE_BUILD_TYPE=Release

.PHONY: all deps build demo test test-asan fuzz bench clean

all: build

# Installs missing Debian packages (apt-get update first); a no-op when all are present.
deps:
	@missing=$$(for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

build: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

demo: deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS) --target difflsq_cli
	$(BUILD)/src/cli/difflsq demo --out $(BUILD)/demo

test: build test-asan fuzz
	cd $(BUILD) && ctest --output-on-failure

# The C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (a second build directory).
# -O0 and line tables only (-g1): on 2 cores this build took 20 min at -O1 -g (a 628 MB
# executable); at -O0 -g1, 9 min to build and 4 min to run with the Harwell–Boeing data.
test-asan: deps
	cmake -S . -B $(BUILD_SAN) -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG=-g1 \
	  -DDIFFLSQ_BUILD_PYTHON=OFF -DDIFFLSQ_BUILD_BENCH=OFF -DDIFFLSQ_BUILD_CLI=OFF \
	  "-DCMAKE_CXX_FLAGS=-O0 -fsanitize=address,undefined -fno-sanitize-recover=all -fsanitize-recover=alignment -fno-omit-frame-pointer"
	cmake --build $(BUILD_SAN) -j $(JOBS) --target difflsq_tests
	ASAN_OPTIONS=detect_leaks=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(CURDIR)/tests/ubsan.supp \
	  $(BUILD_SAN)/tests/difflsq_tests

# The Matrix Market reader under libFuzzer for a bounded time.
fuzz: deps
	cmake -S . -B $(BUILD_FUZZ) -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DDIFFLSQ_BUILD_FUZZ=ON -DDIFFLSQ_BUILD_TESTS=OFF -DDIFFLSQ_BUILD_PYTHON=OFF \
	  -DDIFFLSQ_BUILD_CLI=OFF -DDIFFLSQ_BUILD_BENCH=OFF
	cmake --build $(BUILD_FUZZ) -j $(JOBS) --target fuzz_matrix_market
	mkdir -p $(BUILD_FUZZ)/corpus
	$(BUILD_FUZZ)/src/io/fuzz_matrix_market -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 \
	  $(BUILD_FUZZ)/corpus tests/fuzz_corpus

# The benchmarks (minutes; not part of `make test`). See docs/benchmarks.md.
bench: build
	$(BUILD)/bench/bench_solvers --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true \
	  --benchmark_report_aggregates_only=true
	PYTHONPATH=$(BUILD)/python $(PYTHON) bench/compare_scipy.py --repeat 3

clean:
	rm -rf $(BUILD) $(BUILD_SAN) $(BUILD_FUZZ)
