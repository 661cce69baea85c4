// Writes tests/tokenizer/corpus.json: the strings the tokenizer goldens are made from.
//
//   node tests/tokenizer/make_corpus.mjs [CORPUS_DIR]     (default /work/shared/corpus)
//
// CORPUS_DIR holds the public-domain texts (austen-prideprejudice.txt, mobydick.txt, kjv.txt);
// a ~10 KB passage and a few lines are taken from them. Everything else is written out below.
// The output is a JSON array of strings, no NUL, no lone surrogates, deterministic.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const corpusDir = process.argv[2] || '/work/shared/corpus';
const out = [];
const add = (...xs) => { for (const x of xs) out.push(x); };

// ---- natural text ---------------------------------------------------------------------------
add(
  'Hello, world!',
  'Hello world',
  'The quick brown fox jumps over the lazy dog.',
  'It was the best of times, it was the worst of times.',
  'Dr. Smith arrived at 10 a.m. on Monday; Mrs. Jones (his aunt) was late.',
  '  leading spaces and trailing   ',
  'Well—this is an em dash… and “smart quotes” and ‘single ones’.',
  'naïve café résumé façade coöperate Zürich São Paulo',
  'Straße, Fußgänger, ÄÖÜ äöü',
  'Ça va? Très bien, merci! L\'été à Paris.',
  'Se habla español: ¿Dónde está la biblioteca? ¡Allí!',
  'Zażółć gęślą jaźń.',
  'İstanbul, ıiIİ, Diyarbakır',
  'ﬁnancial ﬂow ﬀ ligatures',
);
// Chinese
add(
  '你好，世界！今天天气怎么样？',
  '中',
  '我爱北京天安门。',
  '人工智能正在改变世界，大型语言模型是其中最重要的技术之一。',
  '他说：“这本书很好看。”我问：“真的吗？”',
  '《红楼梦》是中国古典四大名著之一，作者曹雪芹。',
  '繁體中文：臺灣的資訊科技產業發達。',
  '一二三四五六七八九十百千万亿',
  '价格：￥1,299.00（含税）',
  '中文English混合mixed文本text',
);
// Japanese
add(
  'こんにちは、世界！',
  '日本語のテキストを正しくトークン化できますか？',
  'カタカナ、ひらがな、漢字が混ざっています。',
  '東京都渋谷区１－２－３',
  'ｶﾀｶﾅ半角 ﾃｽﾄ',
  'わたしはネコです。名前はまだない。',
);
// Korean
add(
  '안녕하세요, 세계!',
  '한국어 텍스트 토큰화 테스트입니다.',
  '대한민국의 수도는 서울입니다.',
  '가나다라마바사아자차카타파하',
  '값이 없습니다',
  'ㄱㄴㄷ ㅏㅑㅓ 자모',
);
// Arabic, Hebrew, Persian
add(
  'مرحبا بالعالم',
  'اللغة العربية جميلة جداً.',
  'كتب ١٢٣ و ٤٥٦ كتاباً في عام ٢٠٢٤.',
  'الْعَرَبِيَّةُ مَعَ التَّشْكِيلِ',
  'العربية English مختلطة',
  'שלום עולם! עברית מימין לשמאל.',
  'فارسی: سلام دنیا ۱۲۳۴',
);
// Hindi and other Indic
add(
  'नमस्ते दुनिया',
  'हिन्दी भाषा में लिखा गया वाक्य।',
  'भारत की राजधानी नई दिल्ली है। संख्या: १२३४५',
  'क्षत्रिय ज्ञान श्री',
  'বাংলা ভাষা',
  'தமிழ் மொழி',
  'ગુજરાતી',
);
// Russian, Greek, Thai, Vietnamese, others
add(
  'Привет, мир! Как дела?',
  'Съешь же ещё этих мягких французских булок, да выпей чаю.',
  'ПРИВЕТ ВСЕМ',
  'Γειά σου Κόσμε!',
  'Ελληνικά: αβγδε ΑΒΓΔΕ ς σ Σ',
  'Τὸ ἄλφα καὶ τὸ ὠμέγα',
  'สวัสดีชาวโลก',
  'ภาษาไทยไม่มีช่องว่างระหว่างคำ',
  'Tiếng Việt có nhiều dấu thanh.',
  'Người Việt Nam yêu hòa bình.',
  'Phở bò, bánh mì, cà phê sữa đá.',
  'Ở đây, ữ ự ừ ứ ử ỡ ợ ờ ớ ở',
  'Հայերեն լեզու',
  'ქართული ენა',
  'አማርኛ ቋንቋ',
  'Українська мова: ґ є і ї',
  'ᐃᓄᒃᑎᑐᑦ',
  'Ⲛⲟⲩⲧⲉ',
);

// ---- code ----------------------------------------------------------------------------------
add(
  'def main():\n    print("Hello, world!")\n    return 0\n\n\nif __name__ == "__main__":\n    main()\n',
  'class Foo:\n    def __init__(self, x):\n        self.x = x\n\n    def bar(self):\n        if self.x > 0:\n            return [i ** 2 for i in range(self.x)]\n        return []\n',
  'def f(a,\tb):\n\treturn a+b  # tab-indented\n\t\n',
  'import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\nprint(x.shape)  # (3, 4)\n',
  '#include <stdio.h>\n\nint main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++) {\n\t\tprintf("%s\\n", argv[i]);\n\t}\n\treturn 0;\n}\n',
  'static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }',
  '#define MAX(a, b) ((a) > (b) ? (a) : (b))\n',
  '{\n  "name": "nano",\n  "version": "1.0.0",\n  "list": [1, 2.5, -3e10, true, false, null],\n  "nested": {"a": {"b": "c"}}\n}',
  '{"key":"value","arr":[1,2,3],"esc":"\\u00e9\\n"}',
  'server:\n  host: 0.0.0.0\n  port: 8080\n  paths:\n    - /api/v1\n    - /health\n  debug: false\n',
  '#!/bin/bash\nset -euo pipefail\nfor f in *.txt; do\n\techo "$f"\n\twc -l "$f" | awk \'{print $1}\'\ndone\n',
  'ls -la | grep "\\.json$" && echo $((1 + 2)) > /dev/null 2>&1',
  'all: build\n\nbuild:\n\t$(CC) -O2 -o $@ $^\n\n.PHONY: all build\n',
  'fn main() {\n    let v: Vec<i32> = (0..10).collect();\n    println!("{:?}", v);\n}\n',
  'const add = (a, b) => a + b;\nconsole.log(`sum: ${add(1, 2)}`);\n',
  'SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;',
  'diff --git a/x.c b/x.c\n--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n-int x = 1;\n+int x = 2;\n',
  '<html>\n  <body>\n    <p class="x">Hi &amp; bye</p>\n  </body>\n</html>\n',
  'x=1;y=2;z=x*y/(x-y)%3**2;a[i]+=b[j]<<2;',
  '    \n    \n',
  '\t\t\tdeeply\n\t\t\t\tindented\n',
  '}\n\n}\n\n\n}',
  '!=  ==  <=  >=  ->  =>  ::  ...  ||  &&',
);

// ---- numbers -------------------------------------------------------------------------------
add(
  '12345',
  '0',
  '7',
  '42 is the answer',
  '3.14159265358979',
  '-0.001 +1e-10 6.022e23',
  '1,000,000',
  '1.000.000,50 €',
  '$1,234.56',
  '2024-01-15',
  '15/01/2024 and 01.15.2024',
  '12:34:56.789',
  '+1 (555) 123-4567',
  '+44 20 7946 0958',
  'Call 555-0100 or 555.0199',
  '٣',
  '٠١٢٣٤٥٦٧٨٩',
  '३ ४ ५',
  '３',
  '１２３４５',
  'x² + y³ = z¹',
  '½ ¼ ¾ ⅓ ⅞',
  'Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ ⅰ ⅱ ⅲ',
  'Chapter Ⅻ',
  '① ② ③ ⑩ ⑳',
  '𝟎𝟏𝟐 𝟙𝟚𝟛',
  '߀߁߂ ๑๒๓ ໑໒',
  '10% of 200 = 20',
  '0x1F 0b1010 0o777 1_000_000',
  'v1.2.3-beta.4+build.5',
  '192.168.0.1:8080',
  'IPv6 ::1 and fe80::1%eth0',
  '3rd 21st 2nd 100th',
  'COVID-19 and A4 paper and MP3',
);

// ---- emoji ---------------------------------------------------------------------------------
add(
  '😀',
  '😀😃😄😁',
  'I love 🍕 and 🍣!',
  '👍 👍🏻 👍🏼 👍🏽 👍🏾 👍🏿',
  '👨‍👩‍👧‍👦',
  '👩‍❤️‍💋‍👨',
  '🧑🏽‍💻 👩🏿‍🚀',
  '🏳️‍🌈 🏴‍☠️',
  '🇺🇸🇬🇧🇯🇵🇨🇳',
  '🇺',
  '🏴󠁧󠁢󠁳󠁣󠁴󠁿',
  '1️⃣ 2️⃣ #️⃣ *️⃣ 🔟',
  '❤️ ❤ ☺️ ☺',
  '✅❌⚠️🚀🔥💯',
  'emoji🙂inside🙃words',
);

// ---- contractions --------------------------------------------------------------------------
const suffixes = ['s', 't', 're', 've', 'm', 'll', 'd'];
const caseForms = (s) => {
  const forms = new Set([s, s.toUpperCase(), s[0].toUpperCase() + s.slice(1)]);
  if (s.length === 2) forms.add(s[0] + s[1].toUpperCase());
  return [...forms];
};
for (const s of suffixes) {
  for (const f of caseForms(s)) add(`it'${f} here`);
}
add(
  "'s",
  "'S",
  "'",
  "''",
  "'s'",
  "''s",
  "don't DON'T Don't dOn'T",
  "I'm I'M we're WE'RE we'Re they've THEY'VE They'Ve",
  "you'll YOU'LL You'Ll she'd SHE'D She'D",
  "he's HE'S He'S it's IT'S",
  "y'all rock'n'roll o'clock O'Neil 'twas 'Tis",
  "it'x it'X it'st it'llama it'dx",
  "'sup 'em 'd 'll 've 're 'm 't",
  "it’s it‘s it´s it`s",
  "it's vs it’s vs it‛s",
  "it'ſ",
  "it'ſo IT'ſ",
  "he'ſt a'ſb",
  "it'K it'Kb",
  "it'K 'K 'k",
  "'İ 'ı",
  "O'\u0301s it'\u0301s",
  "x'1 x'123 '42",
  "  's  'S  ",
  "can't won't shan't ain't",
  "l'homme, l'été, aujourd'hui",
  "'S'S'S",
);

// ---- whitespace ----------------------------------------------------------------------------
add(
  ' ',
  '  ',
  '   ',
  '\n',
  '\n\n',
  '\n\n\n\n',
  '\t',
  '\t\t',
  '\r\n',
  '\r\n\r\n',
  '\r',
  'a\rb',
  'a\r\nb',
  'line one\r\nline two\r\n',
  'a\n\rb',
  'a  b',
  'a   b',
  'a \n b',
  'a  \n  b',
  'a \t b',
  'a\t\tb',
  'a\u00A0b',
  'a\u00A0\u00A0b',
  '\u00A0leading nbsp',
  'a\u3000b　c',
  'a\u2028b',
  'a\u2029b',
  'a\u0085b',
  'a\u000Bb\u000Cc',
  'a\u1680b\u2000c\u2003d\u2009e\u200Af\u202Fg\u205Fh',
  'a\u200Bb',
  'a\u180Eb',
  '\uFEFFbyte order mark',
  'trailing space ',
  'trailing spaces   ',
  'trailing tab\t',
  'trailing newline\n',
  'spaces before newline   \nnext',
  'tabs before newline\t\t\nnext',
  ' \n \n \n',
  '\n \n',
  '  \n\n  x',
  'x  \n\n  ',
  '\t \t \n',
  'mixed \u00A0\t\u3000 \r\n whitespace',
  'word\u00A0\nnext',
  '!!!\n\n',
  ' ...\r\n',
  'end.\n',
  'a.\r\rb',
  '$hello _foo \tword',
  '\u00A0word \u3000word',
);
// Which characters the regex's \s takes: in `1cc2c.c\nc` a whitespace c splits off alone
// (\s+(?!\S), \s+), a non-whitespace c joins the punctuation alternative ` ?[^\s\p{L}\p{N}]+`.
for (const c of ['\u000B', '\u000C', '\u001C', '\u001F', '\u0085', '\u00A0', '\u1680', '\u180E',
  '\u2000', '\u2007', '\u200A', '\u200B', '\u2028', '\u2029', '\u202F', '\u205F', '\u3000', '\uFEFF']) {
  add(`1${c}${c}2${c}.${c}\n${c}`);
}

// ---- normalization (NFC matters) -----------------------------------------------------------
add(
  'e\u0301',
  'Cafe\u0301 cafe\u0301',
  'Caf\u00E9 vs Cafe\u0301',
  'A\u030A \u212B \u00C5',
  '\u2126 ohm',
  '\u1100\u1161\u11A8',
  '\u1112\u1161\u11AB\u1100\u1173\u11AF',
  '\u1100\u1161 \u1102\u1161',
  'a\u0307\u0323',
  'a\u0323\u0307',
  'q\u0307\u0323 q\u0323\u0307',
  '\u1E9B\u0323',
  'o\u0308\u0304',
  'u\u0308\u0301 \u01D8',
  'Tie\u0302\u0301ng Vie\u0323\u0302t',
  '\u0958\u0959 \u0915\u093C',
  '\uF900\uF901 \uFA10',
  '\u0340\u0341 a\u0340',
  '\u0344',
  '\u0386 \u0391\u0301',
  'n\u0303 N\u0303 \u00F1',
  'e\u0301\u0301\u0301',
  'x\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308',
  '\u00E9\u0301',
  '\u2000\u2001',
  '\uFB01 \uFB2A',
  '\u0F73 \u0F75',
);

// ---- special tokens and look-alikes -------------------------------------------------------
add(
  '<|im_start|>user\nhi<|im_end|>',
  '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n',
  '<think>reason</think>answer',
  '<think>x</think>',
  '<think>\nLet me think.\n</think>\n\nThe answer is 4.',
  '<|im_start|><|im_end|><|im_start|>',
  '<|endoftext|><|endoftext|>',
  'word<|im_end|>word',
  'abc<think>def</think>ghi',
  ' <|im_start|> ',
  '\n<|im_end|>\n',
  '<|im_start',
  '<|im_end|',
  'im_end|>',
  '<| im_start |>',
  '<|IM_START|>',
  '<th ink>',
  '<thin',
  '</think',
  '<think><think>',
  '<<think>>',
  '<|<|im_end|>|>',
  '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
  '<tool_response>ok</tool_response>',
  '<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>',
  '<|vision_start|><|image_pad|><|vision_end|>',
  '<|box_start|>(1,2),(3,4)<|box_end|>',
  '<|repo_name|>nano<|file_sep|>main.c',
  '<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜>',
  '<|endoftext|>',
  '<think>',
  'user<|im_start|>',
);

// ---- edge cases ----------------------------------------------------------------------------
add(
  '',
  'a',
  'Z',
  '.',
  '\u0001',
  '\u007F',
  '\u001B[31mred\u001B[0m',
  'bell\u0007 backspace\u0008 tab\u0009 vt\u000B ff\u000C',
  '\u0001\u0002\u0003\u001F',
  '\u0080\u0081\u009F',
  '\u0301',
  '\u0301\u0302 a',
  ' \u0301',
  '\u0301abc',
  '\u200D',
  '\u200C\u200D\u2060',
  '\uFE0F',
  '\u202Eevil\u202C',
  '\uFFFD',
  '\uFFFF \uFFFE',
  '\uE000 private use \uF8FF',
  '\u{10FFFF}',
  '\u{1D400}\u{1D401}\u{1D402} math bold',
  '\u{20000}\u{2A6D6}',
  '🙂',
  'ǅ ǈ ǋ',
  'ʰʲ ˢ ᵃ',
  '___',
  '----------',
  '==========',
  '**********',
  '~~~~~',
  '::::',
  '....................................................',
  '"""docstring"""',
  "'''",
  '\\\\server\\share\\file.txt',
  '¡¿',
  '©®™ §¶ †‡ •',
  '±×÷ ≠≤≥ ∞∑∏∫√',
  '← ↑ → ↓ ⇒ ⇔',
  '▁▁▁ ▁x',
  'Ġ Ċ ĉ',
  'ÃĤ Ã©',
);

// ---- long words, long runs ----------------------------------------------------------------
add(
  'Pneumonoultramicroscopicsilicovolcanoconiosis',
  'Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft',
  'a'.repeat(1000),
  'ab'.repeat(300),
  'x'.repeat(257) + ' ' + 'y'.repeat(129),
  '1234567890'.repeat(50),
  '9'.repeat(400),
  ' '.repeat(500),
  ' '.repeat(300) + 'x',
  '\n'.repeat(200),
  '\t'.repeat(100) + 'end',
  '中'.repeat(300),
  '😀'.repeat(100),
  '👨‍👩‍👧‍👦'.repeat(20),
  '!'.repeat(300),
  '-='.repeat(150),
  'Ab1'.repeat(100),
  'aGVsbG8gd29ybGQgdGhpcyBpcyBiYXNlNjQgZW5jb2RlZCBkYXRhIGZvciB0ZXN0aW5nIHB1cnBvc2Vz==',
  'deadbeef0123456789abcdef'.repeat(8),
  'e\u0301'.repeat(100),
  'the '.repeat(250),
);

// ---- URLs, emails, markdown, LaTeX ---------------------------------------------------------
add(
  'https://www.example.com/path/to/page?query=1&lang=en#section-2',
  'http://localhost:8080/api/v1/users/42',
  'ftp://ftp.example.org/pub/file.tar.gz',
  'https://zh.wikipedia.org/wiki/中文',
  'Visit https://github.com/huggingface/tokenizers for more.',
  'user.name+tag@example.co.uk',
  'Contact: <admin@example.org>, 用户@例子.广告',
  '# Heading\n\n## Subheading\n\n- item one\n- item two\n  - nested\n\n1. first\n2. second\n',
  '**bold** _italic_ `code` ~~strike~~ [link](https://x.y)',
  '```python\nprint("hi")\n```\n',
  '| a | b |\n|---|---|\n| 1 | 2 |\n',
  '> quoted text\n>> nested quote',
  '$E = mc^2$',
  '\\frac{a}{b} + \\sqrt{x^2 + y^2}',
  '$$\\int_0^\\infty e^{-x^2}\\,dx = \\frac{\\sqrt{\\pi}}{2}$$',
  '\\begin{align}\n  \\alpha &= \\beta_{i,j} \\\\\n  \\mathbf{v} &\\in \\mathbb{R}^n\n\\end{align}',
  '\\documentclass{article}\n\\usepackage{amsmath}\n',
);

// ---- lines from the public-domain texts ---------------------------------------------------
const read = (name) => fs.readFileSync(path.join(corpusDir, name), 'utf8');
const moby = read('mobydick.txt');
// The file starts with a BOM and uses CRLF; keep both.
add(moby.slice(0, 400));
{
  const lines = moby.split('\r\n').filter((l) => l.trim().length > 20);
  for (let i = 0; i < 12; i++) add(lines[Math.floor((i + 0.5) * lines.length / 12)] + '\r\n');
}
{
  const kjv = read('kjv.txt');
  const lines = kjv.split('\n').filter((l) => l.trim().length > 20);
  for (let i = 0; i < 12; i++) add(lines[Math.floor((i + 0.5) * lines.length / 12)]);
}

// ---- one long passage: ~10 KB of Pride and Prejudice plus a multilingual paragraph --------
{
  const pp = read('austen-prideprejudice.txt');
  const start = pp.indexOf('It is a truth universally acknowledged');
  let end = start + 9500;
  end = pp.indexOf('\n\n', end);
  const multi =
    '\n\nThe same truth, told around the world: ' +
    '这是一个举世公认的真理。' +
    '独身の男で財産があるなら、妻を必要としているに違いない。' +
    '재산이 많은 독신 남자에게 아내가 필요하다는 것은 누구나 인정하는 진리다. ' +
    'إنها لحقيقة معترف بها عالمياً. ' +
    'यह एक सार्वभौमिक सत्य है। ' +
    'Это истина, признанная всеми. ' +
    'Είναι μια παγκοσμίως αναγνωρισμένη αλήθεια. ' +
    'นี่คือความจริงที่ทุกคนยอมรับ ' +
    'Đây là một sự thật được mọi người thừa nhận. ' +
    '🙂👍🏽 ١٢٣ ３ ½\n';
  add(pp.slice(start, end) + multi);
}

// ---- checks and output ----------------------------------------------------------------------
for (const [i, s] of out.entries()) {
  if (typeof s !== 'string') throw new Error(`corpus[${i}] is not a string`);
  if (s.includes('\u0000')) throw new Error(`corpus[${i}] contains NUL`);
  if (!s.isWellFormed()) throw new Error(`corpus[${i}] has a lone surrogate`);
}
const seen = new Map();
for (const [i, s] of out.entries()) {
  if (seen.has(s)) throw new Error(`corpus[${i}] duplicates corpus[${seen.get(s)}]: ${JSON.stringify(s)}`);
  seen.set(s, i);
}
const file = path.join(here, 'corpus.json');
fs.writeFileSync(file, '[\n' + out.map((s) => JSON.stringify(s)).join(',\n') + '\n]\n');
console.log(`${file}: ${out.length} strings, ${fs.statSync(file).size} bytes`);
