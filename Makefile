# nano: one binary from C11 host code and one CUDA file.
#   make            build ./nano (release); without nvcc, a CPU-only binary (reference path only)
#   make test       CPU test suite, run against the release and the ASan+UBSan builds
#   make CUARCH=90a build GPU code for one architecture only (faster builds on the GPU machine)

CUDA_HOME ?= /usr/local/cuda
NVCC      ?= $(shell command -v nvcc 2>/dev/null || echo $(CUDA_HOME)/bin/nvcc)
CC        ?= cc
CUARCH    ?= 80 86 89 90a
STB_INC   ?= /usr/include/stb

WARN      = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wvla -Werror
CFLAGS   ?= -O2
CFLAGS   += -std=c11 -D_GNU_SOURCE -I$(STB_INC) $(WARN) -MMD -MP
NVFLAGS   = -O2 -std=c++17 -Xcompiler -Wall,-Wextra,-Werror $(foreach a,$(CUARCH),-gencode arch=compute_$(a),code=sm_$(a))
CPU_LIBS  = -lpthread -lm
# cuBLAS is not linked: cublas_lazy.c opens it when a GPU engine starts (the rpath is where it looks).
ifneq ($(shell command -v $(NVCC) 2>/dev/null),)
GPU_OBJ   = build/kernels.o build/cublas_lazy.o
LDLIBS    = -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcudart_static -ldl -lrt -lstdc++ $(CPU_LIBS)
else
GPU_OBJ   = build/gpu_none.o
LDLIBS    = $(CPU_LIBS)
endif
SAN       = -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all -fno-omit-frame-pointer -g

HOST_SRC  = nano.c bench.c lineedit.c fatal.c files.c model.c json.c kv.c ref.c check.c tokenizer.c sampler.c unicode.c unicode_data.c
LIB_SRC   = fatal.c files.c model.c json.c kv.c ref.c check.c tokenizer.c sampler.c unicode.c unicode_data.c   # everything but main(), for the tests

TEST_SRC  = tests/test_nano.c tests/test_unicode.c tests/test_tokenizer.c tests/test_modes.c tests/test_files.c tests/test_kv.c tests/test_usage.c \
            tests/test_bench.c tests/test_fuzz.c

FUZZ_SECONDS ?= 60
FUZZ_TARGETS      = json safetensors encode config index tokenizer chat batch resume args
FUZZ_TEST_SECONDS ?= 20
FUZZ_FLAGS = -g -O1 -std=c11 -D_GNU_SOURCE -I. -I$(STB_INC) $(WARN) -Wno-unused-but-set-variable -MMD -MP -fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=all
FUZZ_OBJ   = $(patsubst %.c,build/fuzz/%.o,$(filter-out fatal.c,$(LIB_SRC)) bench.c lineedit.c gpu_none.c) build/fuzz/fuzz_fatal.o build/version.o
ifneq ($(filter test fuzz,$(MAKECMDGOALS)),)
HAVE_LIBFUZZER := $(shell printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return d && n > 1 << 30; }\n' | \
	clang -x c -fsanitize=fuzzer - -o /dev/null 2>/dev/null && echo yes)
endif
FUZZ_TEST = $(if $(HAVE_LIBFUZZER),$(FUZZ_TARGETS:%=build/fuzz_%))

.PHONY: all test test-gpu fuzz clean FORCE
all: nano

build/%.o: %.c | build
	$(CC) $(CFLAGS) -c $< -o $@
build/san/%.o: %.c | build
	$(CC) $(CFLAGS) $(SAN) -c $< -o $@
build/kernels.o: kernels.cu nano.h kv.h half.h $(wildcard gpu/*.cuh gpu/*.h) | build
	$(NVCC) $(NVFLAGS) -c $< -o $@
build/cublas_lazy.o: cublas_lazy.c nano.h | build
	$(CC) $(CFLAGS) -I$(CUDA_HOME)/include -c $< -o $@
build:
	mkdir -p build/san

# The commit --version names; rewritten only when it changes, so nothing relinks without need.
build/version.c: FORCE | build
	@v="const char nano_commit[] = \"$$(git describe --always --dirty 2>/dev/null || echo unknown)\";"; \
	echo "$$v" | cmp -s - $@ || echo "$$v" > $@
build/version.o: build/version.c
	$(CC) $(CFLAGS) -c $< -o $@
FORCE:

nano: $(HOST_SRC:%.c=build/%.o) build/version.o $(GPU_OBJ)
	$(CC) $^ -o $@ $(LDLIBS)
build/san/nano: $(HOST_SRC:%.c=build/san/%.o) build/version.o $(GPU_OBJ)
	$(CC) $(SAN) $^ -o $@ $(LDLIBS)
build/san/test_nano: $(TEST_SRC:%.c=build/san/%.o) $(LIB_SRC:%.c=build/san/%.o) $(GPU_OBJ)
	$(CC) $(SAN) $^ -o $@ $(LDLIBS)
# The CPU-only binary a machine without nvcc builds as ./nano; the suite checks it in every build.
build/nano-cpu: $(HOST_SRC:%.c=build/%.o) build/version.o build/gpu_none.o
	$(CC) $^ -o $@ $(CPU_LIBS)
build/san/tests/%.o: tests/%.c | build
	@mkdir -p build/san/tests
	$(CC) $(CFLAGS) $(SAN) -I. -c $< -o $@

test: nano build/san/nano build/san/test_nano build/nano-cpu $(FUZZ_TEST)
	NANO_FUZZ="$(FUZZ_TEST:build/fuzz_%=%)" NANO_FUZZ_SECONDS=$(FUZZ_TEST_SECONDS) \
	ASAN_OPTIONS=detect_leaks=1:protect_shadow_gap=0 build/san/test_nano ./nano build/san/nano

# GPU suite: each decode stage and prefill kernel against the reference ops on the fixtures' tensors,
# whole forwards GPU vs reference (KLD, top-1, greedy), determinism and the wo_split sweep. Where no
# GPU exists it says so and exits 0 without a verdict. tests/test_gpu.c includes ref.c for its ops.
build/tests/test_gpu.o: tests/test_gpu.c tests/golden.h ref.c nano.h | build
	@mkdir -p build/tests
	$(CC) $(CFLAGS) -I. -c $< -o $@
build/test_gpu: build/tests/test_gpu.o $(patsubst %.c,build/%.o,$(filter-out ref.c,$(LIB_SRC))) $(GPU_OBJ)
	$(CC) $^ -o $@ $(LDLIBS)
test-gpu: nano build/test_gpu
	build/test_gpu

# libFuzzer targets (clang): the JSON and safetensors parsers, encode() on arbitrary bytes, config.json,
# the shard index, tokenizer.json, the chat templates, batch lines, --resume's results and the command
# line. Each links tests/fuzz/fatal.c, whose fatal() returns to the target instead of exiting.
# `make fuzz` runs each from its seeds in tests/fuzz/seeds for FUZZ_SECONDS; `make test` runs each for
# FUZZ_TEST_SECONDS when clang can build them (tests/test_fuzz.c), and says so when it cannot.
build/fuzz/%.o: %.c | build
	@mkdir -p build/fuzz
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build/fuzz/fuzz_fatal.o: tests/fuzz/fatal.c | build
	@mkdir -p build/fuzz
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
build/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_OBJ)
	clang $(FUZZ_FLAGS) -Wno-unused-function -fsanitize=fuzzer $< $(FUZZ_OBJ) $(CPU_LIBS) -o $@  # targets that include nano.c use part of it
.SECONDARY: $(FUZZ_OBJ)  # kept between builds, not removed as intermediates
fuzz: $(FUZZ_TARGETS:%=build/fuzz_%)
	for t in $(FUZZ_TARGETS); do tests/fuzz/run.sh $$t $(FUZZ_SECONDS) || exit 1; done

clean:
	rm -rf build nano

-include $(wildcard build/*.d build/san/*.d build/san/tests/*.d build/tests/*.d build/fuzz/*.d build/fuzz_*.d)
