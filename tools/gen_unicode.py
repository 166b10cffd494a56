#!/usr/bin/env python3
"""gen_unicode.py: write src/unicode_data.h, the character tables behind src/unicode.c.

Reads the Unicode Character Database as Debian's unicode-data package installs it
(/usr/share/unicode): UnicodeData.txt (general category, canonical combining class,
decompositions), PropList.txt (White_Space) and DerivedNormalizationProps.txt
(NFC_QC, Full_Composition_Exclusion). The build never runs this script; its output is
committed. Re-run it after a Unicode update:

    python3 tools/gen_unicode.py [/usr/share/unicode] > src/unicode_data.h

Tables written (all static const, included by src/unicode.c only):
  - per code point flags (one byte), as a two-level table of 128-entry blocks:
    letter, number, punctuation, symbol, mark, control/format/private/surrogate,
    White_Space, and "may change under NFC" (ccc != 0 or NFC_QC != Yes);
  - canonical combining class ranges and NFC_QC != Yes ranges (binary search, only
    consulted for flagged chars);
  - full canonical decompositions (recursively expanded) and primary composites;
  - nonspacing marks (Mn) as ranges, for BERT's accent stripping;
  - upper/title-case (Lu, Lt) and lower-case (Ll) letters as ranges, for the pre-tokenizers
    that split words at case changes (gpt-4o, llama4);
  - lowercase mappings: UnicodeData.txt's simple ones, and SpecialCasing.txt's
    unconditional multi-character ones (what Rust's char::to_lowercase gives, which
    Hugging Face's BERT normalizer uses).
"""
import os
import sys

SHIFT = 7  # block size 128
BLOCK = 1 << SHIFT
NCP = 0x110000

# Bit values; must match the ML_UC_* macros in src/unicode.h.
F_L, F_N, F_P, F_S, F_M, F_NFC, F_C, F_WS = 1, 2, 4, 8, 16, 32, 64, 128
MAJOR = {'L': F_L, 'N': F_N, 'P': F_P, 'S': F_S, 'M': F_M, 'C': F_C, 'Z': 0}


def ranges_of(field):
    a, _, b = field.partition('..')
    a = int(a, 16)
    return a, (int(b, 16) if b else a)


def read_props(path, wanted):
    """{property name: set of code points} for the properties in `wanted`."""
    out = {w: set() for w in wanted}
    with open(path, encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            fields = [x.strip() for x in line.split(';')]
            if fields[1] in out:
                lo, hi = ranges_of(fields[0])
                out[fields[1]].update(range(lo, hi + 1))
    return out


def main():
    udir = sys.argv[1] if len(sys.argv) > 1 else '/usr/share/unicode'
    cat = [None] * NCP
    ccc = [0] * NCP
    decomp = {}
    version = '?'
    with open(os.path.join(udir, 'DerivedNormalizationProps.txt'), encoding='utf-8') as f:
        first = f.readline()
        if '-' in first:
            version = first.split('-', 1)[1].split('.txt')[0]
    with open(os.path.join(udir, 'UnicodeData.txt'), encoding='utf-8') as f:
        range_start = None
        for line in f:
            fld = line.rstrip('\n').split(';')
            cp = int(fld[0], 16)
            if fld[1].endswith(', First>'):
                range_start = cp
                continue
            lo = range_start if fld[1].endswith(', Last>') else cp
            range_start = None
            for c in range(lo, cp + 1):
                cat[c] = fld[2]
                ccc[c] = int(fld[3])
            if fld[5] and not fld[5].startswith('<'):
                decomp[cp] = [int(x, 16) for x in fld[5].split()]

    props = read_props(os.path.join(udir, 'PropList.txt'), ['White_Space'])
    norm = read_props(os.path.join(udir, 'DerivedNormalizationProps.txt'),
                      ['NFC_QC', 'Full_Composition_Exclusion'])
    white = props['White_Space']
    nfc_qc_not_yes = norm['NFC_QC']  # listed values are N or M
    excluded = norm['Full_Composition_Exclusion']

    flags = bytearray(NCP)
    for c in range(NCP):
        g = cat[c]
        v = MAJOR[g[0]] if g else 0  # unassigned (Cn): no category bit
        if c in white:
            v |= F_WS
        if ccc[c] or c in nfc_qc_not_yes:
            v |= F_NFC
        flags[c] = v

    blocks = {}
    stage1 = []
    for s in range(0, NCP, BLOCK):
        key = bytes(flags[s:s + BLOCK])
        if key not in blocks:
            blocks[key] = len(blocks)
        stage1.append(blocks[key])
    assert len(blocks) <= 256, 'stage-1 entries must fit a byte'
    stage2 = b''.join(sorted(blocks, key=blocks.get))

    ccc_ranges = []
    c = 0
    while c < NCP:
        if ccc[c]:
            lo = c
            while c + 1 < NCP and ccc[c + 1] == ccc[lo]:
                c += 1
            ccc_ranges.append((lo, c, ccc[lo]))
        c += 1

    qc_ranges = []
    for c in sorted(nfc_qc_not_yes):
        if qc_ranges and qc_ranges[-1][1] + 1 == c:
            qc_ranges[-1][1] = c
        else:
            qc_ranges.append([c, c])

    def full(cp):
        if cp not in decomp:
            return [cp]
        out = []
        for x in decomp[cp]:
            out += full(x)
        return out

    dec = sorted((cp, full(cp)) for cp in decomp)
    pool, idx = [], []
    for cp, seq in dec:
        idx.append(len(pool))
        pool += seq
    idx.append(len(pool))
    assert len(pool) < 65536
    dec_max = max(len(seq) for _, seq in dec)

    comp = sorted((d[0], d[1], cp) for cp, d in decomp.items()
                  if len(d) == 2 and cp not in excluded)

    mn_ranges = []
    for c in range(NCP):
        if cat[c] == 'Mn':
            if mn_ranges and mn_ranges[-1][1] + 1 == c:
                mn_ranges[-1][1] = c
            else:
                mn_ranges.append([c, c])

    def cat_ranges(cats):
        out = []
        for c in range(NCP):
            if cat[c] in cats:
                if out and out[-1][1] + 1 == c:
                    out[-1][1] = c
                else:
                    out.append([c, c])
        return out
    upper_ranges = cat_ranges(('Lu', 'Lt'))
    lower_ranges = cat_ranges(('Ll',))

    lower = {}
    with open(os.path.join(udir, 'UnicodeData.txt'), encoding='utf-8') as f:
        for line in f:
            fld = line.rstrip('\n').split(';')
            if fld[13]:
                lower[int(fld[0], 16)] = [int(fld[13], 16)]
    with open(os.path.join(udir, 'SpecialCasing.txt'), encoding='utf-8') as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if not line:
                continue
            fld = [x.strip() for x in line.split(';')]
            if fld[4]:  # a condition (language or context): not in char::to_lowercase
                continue
            low = [int(x, 16) for x in fld[1].split()]
            cp = int(fld[0], 16)
            if low != [cp]:
                lower[cp] = low
    lower_single = sorted((cp, v[0]) for cp, v in lower.items() if len(v) == 1)
    lower_multi = sorted((cp, v) for cp, v in lower.items() if len(v) > 1)
    assert all(len(v) == 2 for _, v in lower_multi)

    w = sys.stdout.write
    w('/* unicode_data.h: generated by tools/gen_unicode.py from the Unicode Character Database\n')
    w(' * %s (UnicodeData.txt, PropList.txt, DerivedNormalizationProps.txt, SpecialCasing.txt).\n' % version)
    w(' * Do not edit.\n')
    w(' * Included by src/unicode.c only. */\n')
    w('#ifndef ML_UNICODE_DATA_H\n#define ML_UNICODE_DATA_H\n\n#include <stdint.h>\n\n')
    w('#define ML_UNICODE_VERSION "%s"\n' % version)
    w('#define ML_UC_BLOCK_SHIFT %d\n' % SHIFT)
    w('#define ML_DEC_MAX %d /* longest full canonical decomposition */\n\n' % dec_max)

    def arr(ctype, name, values, per_line=16, fmt='%d'):
        w('static const %s %s[%d] = {\n' % (ctype, name, len(values)))
        for i in range(0, len(values), per_line):
            w('  ' + ','.join(fmt % v for v in values[i:i + per_line]) + ',\n')
        w('};\n\n')

    w('/* flags of code point c: ml_uc_stage2[ml_uc_stage1[c >> SHIFT] << SHIFT | (c & mask)] */\n')
    arr('uint8_t', 'ml_uc_stage1', stage1, 32)
    arr('uint8_t', 'ml_uc_stage2', list(stage2), 32)
    w('/* canonical combining class: inclusive ranges, sorted */\n')
    arr('uint32_t', 'ml_ccc_lo', [r[0] for r in ccc_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_ccc_hi', [r[1] for r in ccc_ranges], 12, '0x%X')
    arr('uint8_t', 'ml_ccc_val', [r[2] for r in ccc_ranges], 24)
    w('/* NFC_Quick_Check = No or Maybe: inclusive ranges, sorted */\n')
    arr('uint32_t', 'ml_nfcqc_lo', [r[0] for r in qc_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_nfcqc_hi', [r[1] for r in qc_ranges], 12, '0x%X')
    w('/* full canonical decomposition of ml_dec_cp[i]: ml_dec_pool[ml_dec_idx[i] .. ml_dec_idx[i+1]) */\n')
    arr('uint32_t', 'ml_dec_cp', [d[0] for d in dec], 12, '0x%X')
    arr('uint16_t', 'ml_dec_idx', idx, 16)
    arr('uint32_t', 'ml_dec_pool', pool, 12, '0x%X')
    w('/* primary composites: (first, second) -> composite, sorted by (first, second) */\n')
    arr('uint32_t', 'ml_comp_first', [x[0] for x in comp], 12, '0x%X')
    arr('uint32_t', 'ml_comp_second', [x[1] for x in comp], 12, '0x%X')
    arr('uint32_t', 'ml_comp_result', [x[2] for x in comp], 12, '0x%X')
    w('/* nonspacing marks (Mn): inclusive ranges, sorted */\n')
    arr('uint32_t', 'ml_mn_lo', [r[0] for r in mn_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_mn_hi', [r[1] for r in mn_ranges], 12, '0x%X')
    w('/* upper- and title-case letters (Lu, Lt), lower-case letters (Ll): inclusive ranges */\n')
    arr('uint32_t', 'ml_lu_lo', [r[0] for r in upper_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_lu_hi', [r[1] for r in upper_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_ll_lo', [r[0] for r in lower_ranges], 12, '0x%X')
    arr('uint32_t', 'ml_ll_hi', [r[1] for r in lower_ranges], 12, '0x%X')
    w('/* lowercase: ml_lower_cp[i] -> ml_lower_to[i]; the unconditional two-character ones */\n')
    arr('uint32_t', 'ml_lower_cp', [x[0] for x in lower_single], 12, '0x%X')
    arr('uint32_t', 'ml_lower_to', [x[1] for x in lower_single], 12, '0x%X')
    arr('uint32_t', 'ml_lower2_cp', [x[0] for x in lower_multi], 12, '0x%X')
    arr('uint32_t', 'ml_lower2_to', [y for x in lower_multi for y in x[1]], 12, '0x%X')
    w('#endif\n')


if __name__ == '__main__':
    main()
