// Writes the tokenizer and chat-template goldens that test_tokenizer.c checks against:
//
//   node tests/gen_tokenizer_golden.mjs NODE_MODULES_PARENT
//
// NODE_MODULES_PARENT is the folder holding node_modules with tokenizers@0.23.2 (the HF Rust
// tokenizer through N-API) and @huggingface/jinja@0.5.11; see tests/tokenizer/README.md.
// Inputs: tests/tokenizer/corpus.json, tests/tokenizer/{qwen3,small}/tokenizer.json,
// tests/tokenizer/templates/*.jinja. Outputs, in tests/tokenizer/:
//   golden_qwen3.json  golden_small.json  chat_golden.json
// All output is plain RFC 8259 JSON: no NaN, no duplicate keys, no NUL, no lone surrogates.

import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const nm = process.argv[2];
if (!nm) {
  console.error('usage: node tests/gen_tokenizer_golden.mjs NODE_MODULES_PARENT');
  process.exit(2);
}
const require = createRequire(path.join(path.resolve(nm), 'noop.js'));
const { Tokenizer } = require('tokenizers');
const { Template, Environment } = require('@huggingface/jinja');

// @huggingface/jinja 0.5.11 ignores the argument of str.strip/lstrip/rstrip and trims all JS
// whitespace, where Python (transformers renders with jinja2) strips exactly the given characters.
// Qwen3's template calls .strip('\n'), .lstrip('\n') and .rstrip('\n'), so put Python's
// semantics in: no argument or None strips str.isspace() characters.
{
  const env = new Environment();
  env.set('s', '');
  const StringValue = env.lookupVariable('s').constructor;
  const FunctionValue = env.lookupVariable('s').builtins.get('strip').constructor;
  const pySpace = new Set('\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005' +
    '\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000');
  const pyStrip = (s, args, left, right) => {
    let set = pySpace;
    if (args.length > 0 && args[0].type !== 'NullValue' && args[0].type !== 'UndefinedValue') {
      if (args[0].type !== 'StringValue') throw new Error('strip() argument must be a string or None');
      set = new Set(args[0].value);
    }
    const cps = [...s];
    let a = 0, b = cps.length;
    while (left && a < b && set.has(cps[a])) a++;
    while (right && b > a && set.has(cps[b - 1])) b--;
    return cps.slice(a, b).join('');
  };
  const builtins = Object.getOwnPropertyDescriptor(StringValue.prototype, 'builtins').get;
  Object.defineProperty(StringValue.prototype, 'builtins', {
    configurable: true,
    get() {
      const map = builtins.call(this);
      if (!map.pythonStrip) {
        for (const [name, left, right] of [['strip', true, true], ['lstrip', true, false], ['rstrip', false, true]])
          map.set(name, new FunctionValue((args) => new StringValue(pyStrip(this.value, args, left, right))));
        map.pythonStrip = true;
      }
      return map;
    },
  });
  const probe = new Template("{{ s.strip('\\n') }}|{{ s.lstrip('\\n') }}|{{ s.rstrip('\\n') }}|{{ s.strip() }}")
    .render({ s: '\n a \n' });
  if (probe !== ' a | a \n|\n a |a') throw new Error('str.strip patch not in effect: ' + JSON.stringify(probe));
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = path.join(root, 'tests', 'tokenizer');
const rel = (p) => path.relative(root, p).split(path.sep).join('/');
const corpus = JSON.parse(fs.readFileSync(path.join(dir, 'corpus.json'), 'utf8'));

// Every string that goes out must survive a strict C parser and a UTF-8 round trip.
function checkString(s, where) {
  if (typeof s !== 'string') throw new Error(`${where}: not a string`);
  if (s.includes('\u0000')) throw new Error(`${where}: contains NUL`);
  if (!s.isWellFormed()) throw new Error(`${where}: lone surrogate`);
}

// One object per line inside the arrays, so diffs stay readable.
function writeJson(file, head, arrays) {
  const parts = [];
  for (const [k, v] of Object.entries(head)) parts.push(`  ${JSON.stringify(k)}: ${JSON.stringify(v)}`);
  for (const [k, rows] of Object.entries(arrays))
    parts.push(`  ${JSON.stringify(k)}: [\n` + rows.map((r) => '    ' + JSON.stringify(r)).join(',\n') + '\n  ]');
  const text = '{\n' + parts.join(',\n') + '\n}\n';
  JSON.parse(text);
  fs.writeFileSync(file, text);
  console.log(`${rel(file)}: ${Object.entries(arrays).map(([k, r]) => `${r.length} ${k}`).join(', ')}, ` +
    `${fs.statSync(file).size} bytes`);
}

// The GPT-2 byte-to-unicode table: the vocab symbol of each byte.
const byteSym = [];
for (let b = 0; b < 256; b++) {
  const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  byteSym.push(printable ? String.fromCodePoint(b) : null);
}
for (let b = 0, n = 0; b < 256; b++) if (byteSym[b] === null) byteSym[b] = String.fromCodePoint(256 + n++);

function loadTokenizer(file) {
  const tok = Tokenizer.fromFile(file);
  const id = (token) => {
    const v = tok.tokenToId(token);
    if (v === null || v === undefined) throw new Error(`${rel(file)}: no token ${JSON.stringify(token)}`);
    return v;
  };
  const byteIds = (bytes) => bytes.map((b) => id(byteSym[b]));
  const encode = async (text, addSpecial) =>
    (await tok.encode(text, null, { addSpecialTokens: addSpecial })).getIds();
  const decode = (ids, skip) => tok.decode(ids, skip);
  return { tok, id, byteIds, encode, decode };
}

async function encodeCases(T, texts, addSpecial, where) {
  const cases = [];
  for (const [i, text] of texts.entries()) {
    checkString(text, `${where} text ${i}`);
    cases.push({ text, ids: await T.encode(text, addSpecial) });
  }
  return cases;
}

async function decodeCases(T, idLists, where) {
  const rows = [];
  for (const [i, ids] of idLists.entries()) {
    for (const skip of [false, true]) {
      const text = await T.decode(ids, skip);
      checkString(text, `${where} decode ${i}`);
      rows.push({ ids, skip_special: skip, text });
    }
  }
  return rows;
}

// Byte sequences that are not valid UTF-8 on their own, as raw bytes.
const badBytes = [
  [0xE4],                         // lead of a 3-byte sequence (the first byte of 中 U+4E2D)
  [0xE4, 0xB8],                   // 中 without its last byte
  [0xB8, 0xAD],                   // 中 without its first byte
  [0xF0, 0x9F, 0x98],             // 😀 U+1F600 without its last byte
  [0xF0, 0x9F],                   // its first half
  [0x98, 0x80],                   // its second half
  [0x80],                         // a lone continuation byte
  [0x80, 0x80, 0x80],
  [0xFF],                         // never valid
  [0xFE, 0xFF],
  [0xC0, 0x80],                   // overlong NUL
  [0xC1, 0xBF],                   // overlong
  [0xE0, 0x80, 0xAF],             // overlong '/'
  [0xED, 0xA0, 0x80],             // UTF-16 surrogate D800 encoded
  [0xF4, 0x90, 0x80, 0x80],       // above U+10FFFF
  [0xF5, 0x80, 0x80, 0x80],
  [0xC3],                         // lead of é, then ASCII
  [0x41, 0xE4, 0xB8, 0x42],       // A, 2/3 of 中, B
  [0xE4, 0xB8, 0xE4, 0xB8, 0xAD], // truncated 中 then a whole 中
  [0xF0, 0x9F, 0x98, 0x80, 0xF0, 0x9F, 0x98], // whole 😀 then 3/4 of it
];

// ---- Qwen3 ------------------------------------------------------------------------------------
{
  const file = path.join(dir, 'qwen3', 'tokenizer.json');
  const T = loadTokenizer(file);
  const cases = await encodeCases(T, corpus, false, 'qwen3');

  // The spec's golden ids must come out as written there.
  const spec = {
    'Hello, world!': [9707, 11, 1879, 0],
    '你好，世界！今天天气怎么样？': [108386, 3837, 99489, 6313, 100644, 104307, 104472, 11319],
    '12345': [16, 17, 18, 19, 20],
    '  leading spaces and trailing   ': [220, 6388, 12621, 323, 27748, 262],
    '<think>reason</think>answer': [151667, 19895, 151668, 9217],
  };
  for (const [text, want] of Object.entries(spec)) {
    const got = cases.find((c) => c.text === text);
    if (!got || JSON.stringify(got.ids) !== JSON.stringify(want))
      throw new Error(`qwen3 ${JSON.stringify(text)}: ${got && got.ids} != ${want}`);
  }

  const enc = (s) => T.encode(s, false);
  const family = await enc('👨‍👩‍👧‍👦');
  const [imStart, imEnd, eot, think, endThink] =
    ['<|im_start|>', '<|im_end|>', '<|endoftext|>', '<think>', '</think>'].map(T.id);
  const [toolCall, fimPrefix, objRef] = ['<tool_call>', '<|fim_prefix|>', '<|object_ref_start|>'].map(T.id);
  const hello = await enc('Hello');
  const nl = await enc('\n');
  const extra = [
    ...badBytes.map((b) => T.byteIds(b)),
    family.slice(0, 1),
    family.slice(0, 2),           // 👨 plus the first two bytes of the ZWJ
    family.slice(0, 4),
    family.slice(1),
    [...T.byteIds([0xE4, 0xB8]), imEnd, ...T.byteIds([0xAD])], // an added token inside a UTF-8 sequence
    [...T.byteIds([0xF0, 0x9F]), think, ...T.byteIds([0x98, 0x80])],
    [imStart, ...await enc('user'), ...nl, ...hello, imEnd, ...nl, imStart, ...await enc('assistant'), ...nl],
    [think, ...await enc('\nreasoning\n'), endThink, ...await enc('\n\nanswer'), imEnd, eot],
    [imStart, imStart, imEnd, imEnd],
    [eot],
    [think],
    [think, endThink],
    [...hello, think, ...hello, endThink, ...hello],
    [toolCall, ...await enc('{"name": "f"}'), T.id('</tool_call>'), imEnd],
    [fimPrefix, ...await enc('def f():'), T.id('<|fim_suffix|>'), T.id('<|fim_middle|>')],
    [objRef, ...hello, T.id('<|object_ref_end|>'), T.id('<tool_response>')],
    [T.id('Ġ'), T.id('Ċ'), T.id('ĉ'), T.id('ĠĠ')],
    [],
  ];
  const decode = [
    ...await decodeCases(T, cases.map((c) => c.ids), 'qwen3 corpus'),
    ...await decodeCases(T, extra, 'qwen3 extra'),
  ];
  writeJson(path.join(dir, 'golden_qwen3.json'),
    { tokenizer: rel(file), add_special_tokens: false },
    { cases, decode });
}

// ---- small fixture: "a b" merges, R1-Distill-style added tokens, BOS post-processor -------------
{
  const file = path.join(dir, 'small', 'tokenizer.json');
  const T = loadTokenizer(file);
  const B = '<｜begin▁of▁sentence｜>', E = '<｜end▁of▁sentence｜>', U = '<｜User｜>', A = '<｜Assistant｜>';
  const own = [
    `${B}${U}Hello<${A}`,
    `${U}What is 2+2?${A}<think>\nsimple\n</think>\n\n4${E}`,
    `${B}You are helpful.${U}Hi${A}<think>\n`,
    B,
    `${B}${B}`,
    E,
    U + A + U + A,
    '</think>',
    '</think>\n',
    '</think>\n\n',
    '</think>\n\n\n',
    '</think>\n\nx',
    'x</think>\n \n',
    '</think>\r\n\r\n',
    '<think></think>\n\n</think>',
    '</think></think>\n\n',
    '<think</think>>',
    `<${U}>`,
    `${U.slice(0, -1)} ${A.slice(1)}`,
    '<｜User',
    '<|EOT|><|EOT|>',
    '<|EOT|',
    '<|EOT|>x<|EOT|>',
    '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n',
    '<|im_start|><think>',
    'word<｜User｜>word',
    '  <｜Assistant｜>  ',
    '\n<think>\n',
    `${E}${B}`,
  ];
  const subset = corpus.filter((_, i) => i % 4 === 0);
  const texts = [...subset, ...own.filter((s) => !subset.includes(s))];
  const cases = await encodeCases(T, texts, true, 'small');
  for (const c of cases) if (c.ids[0] !== T.id(B)) throw new Error(`small: no BOS for ${JSON.stringify(c.text)}`);

  const enc = async (s) => T.encode(s, false);
  const [bos, eos, user, asst, eotTok, think, endThink, imStart, imEnd, endThinkNl] =
    [B, E, U, A, '<|EOT|>', '<think>', '</think>', '<|im_start|>', '<|im_end|>', '</think>\n\n'].map(T.id);
  const extra = [
    ...badBytes.map((b) => T.byteIds(b)),
    [bos, user, ...await enc('Hi'), asst, think, ...await enc('\nhmm\n'), endThinkNl, ...await enc('Hello'), eos],
    [bos, bos, eos, eos],
    [eotTok, imStart, imEnd, endThink, endThinkNl],
    [...T.byteIds([0xE4, 0xB8]), bos, ...T.byteIds([0xAD])],
    [...T.byteIds([0xE4, 0xB8]), user, ...T.byteIds([0xAD])],
    [bos],
    [],
  ];
  const decode = [
    ...await decodeCases(T, cases.map((c) => c.ids), 'small corpus'),
    ...await decodeCases(T, extra, 'small extra'),
  ];
  writeJson(path.join(dir, 'golden_small.json'),
    { tokenizer: rel(file), add_special_tokens: true },
    { cases, decode });
}

// ---- chat templates -----------------------------------------------------------------------------
{
  const templates = {};
  for (const name of ['qwen3', 'qwen2.5-instruct', 'r1-distill-qwen'])
    templates[name] = new Template(fs.readFileSync(path.join(dir, 'templates', `${name}.jinja`), 'utf8'));
  // What transformers passes from each model's tokenizer_config.json.
  const tokens = {
    'qwen3': { eos_token: '<|im_end|>', pad_token: '<|endoftext|>' },
    'qwen2.5-instruct': { eos_token: '<|im_end|>', pad_token: '<|endoftext|>' },
    'r1-distill-qwen': {
      bos_token: '<｜begin▁of▁sentence｜>', eos_token: '<｜end▁of▁sentence｜>', pad_token: '<｜end▁of▁sentence｜>',
    },
  };

  const sys = { role: 'system', content: 'You are a helpful assistant.' };
  const u = (content) => ({ role: 'user', content });
  const a = (content) => ({ role: 'assistant', content });
  const think = '<think>\nreasoning\n</think>\n\nanswer';
  const chats = [
    [u('Hello!')],
    [sys, u('Hello!')],
    [u('What is 2+2?'), a('4'), u('And 3+3?')],
    [sys, u('What is 2+2?'), a('4'), u('And 3+3?')],
    [u('Hi'), a('Hello! How can I help?'), u('Tell me a joke.'), a('Why did the chicken cross the road?'), u('Why?')],
    [sys, u('Hi'), a('Hello!'), u('Tell me a joke.'), a('No.'), u('Please?')],
    [u('What is 2+2?'), a(think), u('And 3+3?')],
    [sys, u('Q1'), a('<think>\nfirst\n</think>\n\nA1'), u('Q2'), a('<think>\nsecond\n</think>\n\nA2'), u('Q3')],
    [u('\n\nHello with newlines\n\n'), a('\n\nanswer with newlines\n'), u('\nok\n')],
    [{ role: 'system', content: '\nSystem with newlines.\n' }, u('你好，世界！🙂')],
    [u('Hello!'), a('Hi there.')],
    [u('What is 2+2?'), a(think)],
    [sys, u('Q1'), a('<think>\nfirst\n</think>\n\nA1'), u('Q2'), a('<think>\nsecond\n</think>\n\nA2')],
    [u('Q1'), a('A1'), { role: 'system', content: 'Be brief.' }, u('Q2')],
    [u('Q'), a('no think tags, but </think> inside: tail')],
    [u('Q'), a('<think>\n  indented reasoning  \n</think>\n\n  spaced answer  ')],
    [u('Q1'), a('<think>\n\n r \n\n</think>\n \n A1 \n'), u(' Q2 ')],
  ];

  const rows = [];
  const render = (template, messages, addGen, enableThinking) => {
    const vars = { messages, add_generation_prompt: addGen, ...tokens[template] };
    if (enableThinking !== null) vars.enable_thinking = enableThinking;
    const text = templates[template].render(vars);
    checkString(text, `chat ${template}`);
    for (const m of messages) checkString(m.content, `chat ${template} message`);
    rows.push({ template, messages, add_generation_prompt: addGen, enable_thinking: enableThinking, text });
  };
  for (const messages of chats) {
    const endsWithUser = messages[messages.length - 1].role === 'user';
    for (const template of Object.keys(templates)) {
      const modes = template === 'qwen3' ? [null, true, false] : [null];
      for (const et of modes) render(template, messages, endsWithUser, et);
    }
  }
  // A generation prompt after an assistant turn, and no generation prompt after a user turn.
  for (const template of Object.keys(templates)) {
    render(template, [u('Hello!'), a('Hi there.')], true, null);
    render(template, [u('Hello!')], false, null);
  }
  render('qwen3', [u('Hello!'), a('Hi there.')], true, false);

  // The spec's rendered examples.
  const q3 = rows.find((r) => r.template === 'qwen3' && r.enable_thinking === false &&
    r.messages.length === 1 && r.messages[0].content === 'Hello!' && r.add_generation_prompt);
  if (q3.text !== '<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')
    throw new Error('qwen3 enable_thinking=false render: ' + JSON.stringify(q3.text));
  const q25 = rows.find((r) => r.template === 'qwen2.5-instruct' && r.messages.length === 1 && r.add_generation_prompt);
  if (q25.text !== '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.' +
      '<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n')
    throw new Error('qwen2.5 render: ' + JSON.stringify(q25.text));
  const r1 = rows.find((r) => r.template === 'r1-distill-qwen' && r.messages.length === 1 && r.add_generation_prompt);
  if (r1.text !== '<｜begin▁of▁sentence｜><｜User｜>Hello!<｜Assistant｜><think>\n')
    throw new Error('r1 render: ' + JSON.stringify(r1.text));

  const file = path.join(dir, 'chat_golden.json');
  const text = '[\n' + rows.map((r) => '  ' + JSON.stringify(r)).join(',\n') + '\n]\n';
  JSON.parse(text);
  fs.writeFileSync(file, text);
  console.log(`${rel(file)}: ${rows.length} cases, ${fs.statSync(file).size} bytes`);
}
