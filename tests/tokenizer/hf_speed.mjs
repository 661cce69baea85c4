// Encoding speed of the HF Rust tokenizer (through N-API), the reference for nano's tokenizer:
//
//   node tests/tokenizer/hf_speed.mjs NODE_MODULES_PARENT TOKENIZER_JSON TEXT_FILE
//
// Encodes the whole file as one string, add_special_tokens off, three times, and prints
// `hf-tokenizers: N ids, best of 3 X ms (Y MB/s)` with MB = 10^6 bytes of UTF-8 input.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const [nm, tokFile, textFile] = process.argv.slice(2);
if (!textFile) {
  console.error('usage: node tests/tokenizer/hf_speed.mjs NODE_MODULES_PARENT TOKENIZER_JSON TEXT_FILE');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nm), 'noop.js'));
const { Tokenizer } = require('tokenizers');

const tok = Tokenizer.fromFile(tokFile);
const bytes = fs.readFileSync(textFile);
const text = bytes.toString('utf8');
let best = Infinity, n = -1;
for (let i = 0; i < 3; i++) {
  const t0 = process.hrtime.bigint();
  const ids = (await tok.encode(text, null, { addSpecialTokens: false })).getIds();
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (n >= 0 && ids.length !== n) throw new Error(`run ${i}: ${ids.length} ids, earlier ${n}`);
  n = ids.length;
  best = Math.min(best, ms);
}
console.log(`hf-tokenizers: ${n} ids, best of 3 ${best.toFixed(1)} ms (${(bytes.length / 1e3 / best).toFixed(2)} MB/s)`);
