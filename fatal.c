// The one way nano stops on an error: one line on stderr, exit status 1. A file of its own so that the
// fuzz targets (tests/fuzz/) can link a fatal() that returns to the fuzzer instead of exiting.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "nano.h"

void fatal(const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    // Names from hostile files must not break the one-line promise or drive the terminal.
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    fprintf(stderr, "nano: %s\n", msg);
    exit(1);
}
