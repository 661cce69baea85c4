// What the fuzz targets share. nano's fatal() prints one line and exits; the targets link
// tests/fuzz/fatal.c instead, whose fatal() keeps the message in fuzz_error and jumps back to the
// target's setjmp, so a refused input returns to the fuzzer like an accepted one.
#ifndef NANO_FUZZ_H
#define NANO_FUZZ_H

#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

extern jmp_buf fuzz_return;
extern int fuzz_armed;         // 1 while a setjmp waits; fatal() without one is a finding: it aborts
extern char fuzz_error[1024];  // the last fatal() message

// The pattern, in each target:
//   fuzz_armed = 1;
//   if (setjmp(fuzz_return)) { fuzz_check_error(...); free what was built; return 0; }
//   ... code that may call fatal() ...
//   fuzz_armed = 0;
// Locals changed after setjmp and read after the jump must be volatile (setjmp's rule).

// An error message must not be empty; prefix, when not NULL, must start it (the file or flag it names).
void fuzz_check_error(const char *prefix);

// A copy of data as a NUL-terminated heap string of exactly size + 1 bytes (ASan sees reads past it).
char *fuzz_text(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#endif
