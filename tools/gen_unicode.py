#!/usr/bin/env python3
"""Writes unicode_data.c, the tables behind unicode.c, from the Unicode Character Database files of
Debian's unicode-data package (apt-get install unicode-data).

    python3 tools/gen_unicode.py [unicode_data.c]          (stdout without an argument)
    python3 tools/gen_unicode.py --ucd DIR [unicode_data.c]   (another copy of the UCD)

Tables:
  uc_flags    per code point: UC_LETTER/UC_NUMBER/UC_SPACE, NFC quick check No/Maybe, "has a canonical
              decomposition", "ccc is not 0"; two stages, 256-entry blocks deduplicated
  uc_ccc      canonical combining class, same layout
  uc_decomp   full canonical decompositions, sorted by code point (Hangul syllables excluded)
  uc_comp     primary composites (first, second, composite), sorted, Full_Composition_Exclusion left out
"""
import sys

N = 0x110000
BLOCK = 256
# Flag bits; UC_LETTER/UC_NUMBER/UC_SPACE (1, 2, 4) come from nano.h.
F_QC_NO, F_QC_MAYBE, F_DECOMP, F_CCC = 8, 16, 32, 64
S_BASE, S_COUNT = 0xAC00, 11172  # Hangul syllables: decomposed and composed in unicode.c


def fields(path):
    """Data lines of a UCD file, split on ';' and stripped, comments dropped."""
    for line in open(path, encoding="utf-8"):
        line = line.split("#")[0].strip()
        if line:
            yield [f.strip() for f in line.split(";")]


def span(s):
    lo, _, hi = s.partition("..")
    return range(int(lo, 16), int(hi or lo, 16) + 1)


def version(path):
    first = open(path, encoding="utf-8").readline()  # "# PropList-15.0.0.txt"
    return first.strip("# \n").split("-")[1].rsplit(".", 1)[0]


def load(ucd):
    cat, ccc, dec = ["Cn"] * N, [0] * N, {}
    first = None
    for f in fields(ucd + "/UnicodeData.txt"):
        cp = int(f[0], 16)
        if f[1].endswith(", First>"):
            first = cp
            continue
        lo = first if f[1].endswith(", Last>") else cp
        first = None
        for c in range(lo, cp + 1):
            cat[c], ccc[c] = f[2], int(f[3])
        if f[5] and not f[5].startswith("<"):  # canonical only; <tag> marks compatibility
            dec[cp] = [int(x, 16) for x in f[5].split()]
    space = {c for f in fields(ucd + "/PropList.txt") if f[1] == "White_Space" for c in span(f[0])}
    props = list(fields(ucd + "/DerivedNormalizationProps.txt"))
    excl = {c for f in props if f[1] == "Full_Composition_Exclusion" for c in span(f[0])}
    qc = {c: f[2] for f in props if f[1] == "NFC_QC" for c in span(f[0])}
    # CompositionExclusions.txt lists the script-specific and post-composition-version part of
    # the exclusions; the derived property must contain it.
    listed = {c for f in fields(ucd + "/CompositionExclusions.txt") for c in span(f[0])}
    assert listed <= excl
    return cat, ccc, dec, space, excl, qc


def full_decomp(c, dec):
    return [y for x in dec[c] for y in full_decomp(x, dec)] if c in dec else [c]


def utf8_len(c):
    return 1 if c < 0x80 else 2 if c < 0x800 else 3 if c < 0x10000 else 4


def two_stage(vals):
    """(stage1, blocks): stage1[cp >> 8] picks a deduplicated 256-entry block."""
    seen, stage1, blocks = {}, [], []
    for i in range(0, N, BLOCK):
        b = tuple(vals[i : i + BLOCK])
        if b not in seen:
            seen[b] = len(blocks)
            blocks.append(b)
        stage1.append(seen[b])
    assert len(blocks) <= 256
    return stage1, blocks


def rows(vals, per, fmt="%d"):
    out = []
    for i in range(0, len(vals), per):
        out.append("    " + ",".join(fmt % v for v in vals[i : i + per]) + ",")
    return out


def main():
    args = sys.argv[1:]
    ucd = "/usr/share/unicode"
    if args[:1] == ["--ucd"]:
        ucd, args = args[1], args[2:]
    cat, ccc, dec, space, excl, qc = load(ucd)
    ver = version(ucd + "/PropList.txt")

    comp = sorted((d[0], d[1], c) for c, d in dec.items() if len(d) == 2 and c not in excl)
    full = {c: full_decomp(c, dec) for c in sorted(dec)}

    # What unicode.c relies on. Second halves of pairs are exactly the NFC_QC=Maybe code points
    # (with the Hangul vowels and trailing consonants), so only those are tried for composition.
    second = {b for _, b, _ in comp} | set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))
    assert second == {c for c, v in qc.items() if v == "M"}
    assert all(ccc[a] == 0 and ccc[c] == 0 for a, _, c in comp)
    # A code point with ccc 0 and NFC_QC=Yes starts a segment that normalizes on its own: its
    # decomposition starts with a starter that composes with nothing before it.
    for c, d in full.items():
        if ccc[c] == 0 and c not in qc:
            assert ccc[d[0]] == 0 and d[0] not in qc
    # Output never outgrows 3x the input, and composing never lengthens the UTF-8.
    assert all(sum(map(utf8_len, d)) <= 3 * utf8_len(c) for c, d in full.items())
    assert all(utf8_len(c) <= utf8_len(a) + utf8_len(b) for a, b, c in comp)
    assert not any(S_BASE <= c < S_BASE + S_COUNT for c in dec)

    flags = [0] * N
    for c in range(N):
        k, f = cat[c], 0
        if k in ("Lu", "Ll", "Lt", "Lm", "Lo"):
            f |= 1
        if k in ("Nd", "Nl", "No"):
            f |= 2
        if c in space:
            f |= 4
        f |= {"N": F_QC_NO, "M": F_QC_MAYBE}.get(qc.get(c), 0)
        if c in dec:
            f |= F_DECOMP
        if ccc[c]:
            f |= F_CCC
        flags[c] = f

    o = []
    o.append("// Generated by `python3 tools/gen_unicode.py > unicode_data.c` from the Unicode Character")
    o.append("// Database %s (Debian unicode-data: UnicodeData.txt, PropList.txt, DerivedNormalizationProps.txt," % ver)
    o.append("// CompositionExclusions.txt). Do not edit; see unicode.c for how the tables are read.")
    o.append("#include <stdint.h>")
    o.append("")
    o.append('const char uc_version[] = "%s";' % ver)
    for name, vals in (("flags", flags), ("ccc", ccc)):
        stage1, blocks = two_stage(vals)
        o.append("")
        o.append("const uint8_t uc_%s_index[%d] = {" % (name, len(stage1)))
        o += rows(stage1, 32)
        o.append("};")
        o.append("const uint8_t uc_%s_blocks[%d][%d] = {" % (name, len(blocks), BLOCK))
        for b in blocks:
            o.append("  {")
            o += rows(b, 64)
            o.append("  },")
        o.append("};")

    seq, off = [], [0]
    for c, d in full.items():
        seq += d
        off.append(len(seq))
    o.append("")
    o.append("const int uc_n_decomp = %d;" % len(full))
    o.append("const uint32_t uc_decomp_cp[%d] = {" % len(full))
    o += rows(list(full), 12, "0x%X")
    o.append("};")
    o.append("const uint16_t uc_decomp_off[%d] = {  // decomposition i is uc_decomp_seq[off[i]..off[i+1])" % len(off))
    o += rows(off, 20)
    o.append("};")
    o.append("const uint32_t uc_decomp_seq[%d] = {" % len(seq))
    o += rows(seq, 12, "0x%X")
    o.append("};")
    o.append("")
    o.append("const int uc_n_comp = %d;" % len(comp))
    o.append("const uint32_t uc_comp[%d][3] = {  // first, second, composite; sorted" % len(comp))
    for i in range(0, len(comp), 4):
        o.append("    " + " ".join("{0x%X,0x%X,0x%X}," % t for t in comp[i : i + 4]))
    o.append("};")

    text = "\n".join(o) + "\n"
    if args:
        with open(args[0], "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
