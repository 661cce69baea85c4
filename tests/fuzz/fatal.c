// The fuzz targets' fatal(): the message into fuzz_error and back to the target's setjmp (see fuzz.h).
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nano.h"
#include "tests/fuzz/fuzz.h"

jmp_buf fuzz_return;
int fuzz_armed;
char fuzz_error[1024];

void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(fuzz_error, sizeof fuzz_error, fmt, ap);
    va_end(ap);
    if (n <= 0 || !fuzz_armed) abort();
    fuzz_armed = 0;
    longjmp(fuzz_return, 1);
}

void fuzz_check_error(const char *prefix) {
    if (!fuzz_error[0]) abort();
    if (prefix && strncmp(fuzz_error, prefix, strlen(prefix)) && strncmp(fuzz_error, "out of memory", 13)) abort();
}

char *fuzz_text(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = 0;
    return s;
}
