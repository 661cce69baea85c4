// Tokenizer (tokenizer.json, byte-level BPE): not implemented yet. Until it is, nano takes prompts
// as token ids (--prompt-ids) and prints generated ids (--print-ids).
#include "nano.h"
