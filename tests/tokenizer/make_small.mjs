// Builds tests/tokenizer/small/{tokenizer.json,tokenizer_config.json} from the Qwen3 tokenizer.json:
// a small byte-level BPE that exercises what Qwen3's file does not.
//
//   node tests/tokenizer/make_small.mjs NODE_MODULES_PARENT
//
// - model.merges stored as "a b" strings (the older Qwen2/2.5 layout), the first NMERGES of Qwen3's;
// - model.vocab: the 256 byte symbols plus every kept merge result, renumbered densely in the order
//   of their Qwen3 ids (so bytes keep ids 0..255);
// - R1-Distill-style added tokens right after the vocab, some special, some not, with `</think>`
//   a prefix of another added token (`</think>\n\n`) to test leftmost-longest matching;
// - a TemplateProcessing post-processor that prepends <｜begin▁of▁sentence｜> when
//   add_special_tokens is on, as DeepSeek-R1-Distill-Qwen's tokenizer.json does;
// - Qwen3's normalizer, pre_tokenizer and decoder, unchanged; the model block has no
//   "ignore_merges" key, as in the older files (the default, false, applies).
// tokenizer_config.json carries bos/eos as AddedToken objects, as R1-Distill-Qwen's does, and the
// R1-Distill-Qwen chat template from tests/tokenizer/templates/.
// The result is loaded back through the HF tokenizer as a check.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const NMERGES = 3000;
const here = path.dirname(fileURLToPath(import.meta.url));
const nm = process.argv[2];
if (!nm) {
  console.error('usage: node tests/tokenizer/make_small.mjs NODE_MODULES_PARENT');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nm), 'noop.js'));
const { Tokenizer } = require('tokenizers');

const src = JSON.parse(fs.readFileSync(path.join(here, 'qwen3', 'tokenizer.json'), 'utf8'));
const vocab = src.model.vocab;

// The 256 byte symbols of the GPT-2 byte-to-unicode table.
const byteSyms = [];
for (let b = 0; b < 256; b++) {
  const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  byteSyms.push(printable ? String.fromCodePoint(b) : null);
}
for (let b = 0, n = 0; b < 256; b++) if (byteSyms[b] === null) byteSyms[b] = String.fromCodePoint(256 + n++);

// Keep merges in rank order while both parts are already known.
const keep = new Set(byteSyms);
for (const s of byteSyms) if (!(s in vocab)) throw new Error(`byte symbol ${s} missing from vocab`);
const merges = [];
for (const m of src.model.merges) {
  if (merges.length === NMERGES) break;
  const [a, b] = Array.isArray(m) ? m : m.split(' ');
  if (!keep.has(a) || !keep.has(b)) continue;
  if (!((a + b) in vocab)) throw new Error(`merge result ${a + b} missing from vocab`);
  merges.push(`${a} ${b}`);
  keep.add(a + b);
}

const kept = [...keep].sort((x, y) => vocab[x] - vocab[y]);
const newVocab = {};
kept.forEach((tok, i) => { newVocab[tok] = i; });
const V = kept.length;

const added = [
  ['<｜end▁of▁sentence｜>', true],
  ['<｜User｜>', false],
  ['<｜Assistant｜>', false],
  ['<｜begin▁of▁sentence｜>', true],
  ['<|EOT|>', false],
  ['<think>', false],
  ['</think>', false],
  ['<|im_start|>', true],
  ['<|im_end|>', true],
  ['</think>\n\n', false],
].map(([content, special], i) => ({
  id: V + i,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special,
}));
const bos = added.find((t) => t.content === '<｜begin▁of▁sentence｜>');

const tok = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: added,
  normalizer: src.normalizer,
  pre_tokenizer: src.pre_tokenizer,
  post_processor: {
    type: 'TemplateProcessing',
    single: [
      { SpecialToken: { id: bos.content, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
    ],
    pair: [
      { SpecialToken: { id: bos.content, type_id: 0 } },
      { Sequence: { id: 'A', type_id: 0 } },
      { SpecialToken: { id: bos.content, type_id: 1 } },
      { Sequence: { id: 'B', type_id: 1 } },
    ],
    special_tokens: {
      [bos.content]: { id: bos.content, ids: [bos.id], tokens: [bos.content] },
    },
  },
  decoder: src.decoder,
  model: {
    type: 'BPE',
    dropout: null,
    unk_token: null,
    continuing_subword_prefix: '',
    end_of_word_suffix: '',
    fuse_unk: false,
    byte_fallback: false,
    vocab: newVocab,
    merges,
  },
};

// Same layout as the HF writer: two-space indent, one vocab entry or merge per line.
const J = JSON.stringify;
const lines = [];
lines.push('{');
for (const key of ['version', 'truncation', 'padding']) lines.push(`  ${J(key)}: ${J(tok[key])},`);
lines.push('  "added_tokens": [');
lines.push(added.map((t) => '    ' + J(t)).join(',\n'));
lines.push('  ],');
for (const key of ['normalizer', 'pre_tokenizer', 'post_processor', 'decoder'])
  lines.push(`  ${J(key)}: ${J(tok[key])},`);
lines.push('  "model": {');
for (const key of Object.keys(tok.model).filter((k) => k !== 'vocab' && k !== 'merges'))
  lines.push(`    ${J(key)}: ${J(tok.model[key])},`);
lines.push('    "vocab": {');
lines.push(kept.map((t, i) => `      ${J(t)}: ${i}`).join(',\n'));
lines.push('    },');
lines.push('    "merges": [');
lines.push(merges.map((m) => '      ' + J(m)).join(',\n'));
lines.push('    ]');
lines.push('  }');
lines.push('}');
const text = lines.join('\n') + '\n';
if (JSON.stringify(JSON.parse(text)) !== JSON.stringify(tok)) throw new Error('writer mismatch');

fs.mkdirSync(path.join(here, 'small'), { recursive: true });
const file = path.join(here, 'small', 'tokenizer.json');
fs.writeFileSync(file, text);

const chatTemplate = fs.readFileSync(path.join(here, 'templates', 'r1-distill-qwen.jinja'), 'utf8');
const addedTokenObj = (content) => ({
  __type: 'AddedToken', content, lstrip: false, normalized: true, rstrip: false, single_word: false,
});
const config = {
  add_bos_token: true,
  add_eos_token: false,
  bos_token: addedTokenObj('<｜begin▁of▁sentence｜>'),
  clean_up_tokenization_spaces: false,
  eos_token: addedTokenObj('<｜end▁of▁sentence｜>'),
  legacy: true,
  model_max_length: 16384,
  pad_token: addedTokenObj('<｜end▁of▁sentence｜>'),
  sp_model_kwargs: {},
  unk_token: null,
  tokenizer_class: 'LlamaTokenizerFast',
  chat_template: chatTemplate,
};
fs.writeFileSync(path.join(here, 'small', 'tokenizer_config.json'), JSON.stringify(config, null, 2) + '\n');

// Check: HF loads it and agrees on the sizes and the BOS.
const t = Tokenizer.fromFile(file);
if (t.getVocabSize(false) !== V) throw new Error(`HF vocab size ${t.getVocabSize(false)} != ${V}`);
if (t.getVocabSize(true) !== V + added.length) throw new Error('HF vocab size with added tokens');
const e = await t.encode('Hello world', null, { addSpecialTokens: true });
if (e.getIds()[0] !== bos.id) throw new Error('BOS not prepended');
console.log(`${file}: ${V} vocab, ${merges.length} merges, ${added.length} added tokens ` +
  `(ids ${V}..${V + added.length - 1}), ${text.length} chars, ${fs.statSync(file).size} bytes`);
