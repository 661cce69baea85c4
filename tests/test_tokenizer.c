// Tokenizer: ids against the HF Rust tokenizer's goldens, decoding, streaming, chat templates.
#include "tests/check.h"

void test_tokenizer(void) {}
void test_tokenizer_cli(const char *nano) { (void)nano; }
