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

HOST_SRC  = nano.c bench.c lineedit.c files.c model.c json.c kv.c ref.c check.c tokenizer.c sampler.c unicode.c unicode_data.c
LIB_SRC   = files.c model.c json.c kv.c ref.c check.c tokenizer.c sampler.c unicode.c unicode_data.c   # everything but main(), for the tests

TEST_SRC  = tests/test_nano.c tests/test_unicode.c tests/test_tokenizer.c tests/test_modes.c tests/test_files.c tests/test_kv.c tests/test_usage.c tests/test_bench.c

FUZZ_SECONDS ?= 60

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

test: nano build/san/nano build/san/test_nano build/nano-cpu
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

# libFuzzer targets (needs clang): the JSON and safetensors parsers and encode() on arbitrary bytes,
# each started from its seeds in tests/fuzz/seeds and run for FUZZ_SECONDS.
FUZZ_TARGETS = json safetensors encode
FUZZ_SRC     = files.c json.c model.c tokenizer.c unicode.c unicode_data.c
build/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_SRC) nano.h | build
	clang -g -O1 -std=c11 -D_GNU_SOURCE -I. -I$(STB_INC) -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all $< $(FUZZ_SRC) -lm -o $@
fuzz: $(FUZZ_TARGETS:%=build/fuzz_%)
	for t in $(FUZZ_TARGETS); do mkdir -p build/corpus_$$t && build/fuzz_$$t -max_len=8192 -max_total_time=$(FUZZ_SECONDS) \
		$$( [ -f tests/fuzz/seeds/$$t.dict ] && echo -dict=tests/fuzz/seeds/$$t.dict ) build/corpus_$$t tests/fuzz/seeds/$$t || exit 1; done

clean:
	rm -rf build nano

-include $(wildcard build/*.d build/san/*.d build/san/tests/*.d build/tests/*.d)
