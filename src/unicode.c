/* unicode.c: UTF-8, character classes, NFC and the pre-tokenizer splitters.
 *
 * The splitters are the regexes of llama.cpp's llm_tokenizer_bpe written out as code over
 * an array of code points. The regex semantics they reproduce are those of a backtracking
 * engine (leftmost match, alternatives tried in order, greedy quantifiers), as in
 * Hugging Face tokenizers and llama.cpp: a "?" prefix or a lookahead is decided by looking
 * at the next code point. Code points outside the piece being split behave like end of
 * text. The tables come from tools/gen_unicode.py (src/unicode_data.h).
 */
#include "unicode.h"

#include "unicode_data.h"

#define UC_BLOCK_MASK ((1u << ML_UC_BLOCK_SHIFT) - 1)

uint8_t ml_uc_flags(uint32_t cp) {
  if (cp >= 0x110000) return ML_UC_S; /* raw byte: classed like U+FFFD */
  return ml_uc_stage2[(uint32_t)ml_uc_stage1[cp >> ML_UC_BLOCK_SHIFT] << ML_UC_BLOCK_SHIFT |
                      (cp & UC_BLOCK_MASK)];
}

/* ---- UTF-8 ---- */

int ml_utf8_check(const uint8_t *s, size_t n) {
  uint8_t c = s[0], lo = 0x80, hi = 0xBF;
  int need;
  if (c < 0x80) return 1;
  if (c < 0xC2) return -1;
  if (c < 0xE0) {
    need = 2;
  } else if (c < 0xF0) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F; /* no surrogates */
  } else if (c < 0xF5) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return -1;
  }
  for (int i = 1; i < need; i++) {
    if ((size_t)i >= n) return 0;
    if (s[i] < lo || s[i] > hi) return -i;
    lo = 0x80;
    hi = 0xBF;
  }
  return need;
}

size_t ml_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
  uint8_t c = s[0];
  if (c < 0x80) {
    *cp = c;
    return 1;
  }
  int len = ml_utf8_check(s, n);
  switch (len) {
  case 2: *cp = (uint32_t)(c & 0x1F) << 6 | (s[1] & 0x3F); return 2;
  case 3: *cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F); return 3;
  case 4:
    *cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 |
          (s[3] & 0x3F);
    return 4;
  default: *cp = ML_UC_RAW + c; return 1;
  }
}

size_t ml_utf8_encode(uint32_t cp, uint8_t out[4]) {
  if (cp < 0x80) {
    out[0] = (uint8_t)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (uint8_t)(0xC0 | cp >> 6);
    out[1] = (uint8_t)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (uint8_t)(0xE0 | cp >> 12);
    out[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp & 0x3F));
    return 3;
  }
  if (cp < 0x110000) {
    out[0] = (uint8_t)(0xF0 | cp >> 18);
    out[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
  }
  out[0] = (uint8_t)(cp - ML_UC_RAW); /* a raw byte goes back as it came */
  return 1;
}

/* ---- NFC ---- */

/* Index of the range containing cp in sorted inclusive ranges lo/hi, or -1. */
static int range_find(const uint32_t *lo, const uint32_t *hi, int n, uint32_t cp) {
  int a = 0, b = n - 1;
  while (a <= b) {
    int m = (a + b) / 2;
    if (cp < lo[m]) b = m - 1;
    else if (cp > hi[m]) a = m + 1;
    else return m;
  }
  return -1;
}

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

static int ccc_of(uint32_t cp) {
  if (cp < 0x300 || cp >= 0x110000) return 0;
  int i = range_find(ml_ccc_lo, ml_ccc_hi, NELEM(ml_ccc_lo), cp);
  return i < 0 ? 0 : ml_ccc_val[i];
}

/* Hangul syllables compose and decompose by arithmetic (Unicode ch. 3.12). */
enum {
  HG_SBASE = 0xAC00, HG_LBASE = 0x1100, HG_VBASE = 0x1161, HG_TBASE = 0x11A7,
  HG_LCOUNT = 19, HG_VCOUNT = 21, HG_TCOUNT = 28,
  HG_NCOUNT = HG_VCOUNT * HG_TCOUNT, HG_SCOUNT = HG_LCOUNT * HG_NCOUNT
};

int ml_nfc_needed(const uint32_t *cp, const uint8_t *fl, size_t n) {
  int last = 0;
  for (size_t i = 0; i < n; i++) {
    if (!(fl[i] & ML_UC_NFC)) {
      last = 0;
      continue;
    }
    if (range_find(ml_nfcqc_lo, ml_nfcqc_hi, NELEM(ml_nfcqc_lo), cp[i]) >= 0) return 1;
    int c = ccc_of(cp[i]);
    if (c != 0 && last > c) return 1;
    last = c;
  }
  return 0;
}

static size_t decompose(uint32_t cp, uint32_t *out) {
  if (cp - HG_SBASE < (uint32_t)HG_SCOUNT) {
    uint32_t s = cp - HG_SBASE, t = s % HG_TCOUNT;
    out[0] = HG_LBASE + s / HG_NCOUNT;
    out[1] = HG_VBASE + s % HG_NCOUNT / HG_TCOUNT;
    if (t == 0) return 2;
    out[2] = HG_TBASE + t;
    return 3;
  }
  if (cp >= 0xC0 && cp < 0x110000) {
    int a = 0, b = NELEM(ml_dec_cp) - 1;
    while (a <= b) {
      int m = (a + b) / 2;
      if (cp < ml_dec_cp[m]) b = m - 1;
      else if (cp > ml_dec_cp[m]) a = m + 1;
      else {
        size_t k = 0;
        for (int j = ml_dec_idx[m]; j < ml_dec_idx[m + 1]; j++) out[k++] = ml_dec_pool[j];
        return k;
      }
    }
  }
  out[0] = cp;
  return 1;
}

size_t ml_nfd(const uint32_t *in, size_t n, uint32_t *out) {
  size_t k = 0;
  for (size_t i = 0; i < n; i++) k += decompose(in[i], out + k);
  /* canonical order: stable sort of each run of non-starters by combining class */
  for (size_t i = 1; i < k; i++) {
    int c = ccc_of(out[i]);
    if (!c) continue;
    uint32_t x = out[i];
    size_t j = i;
    while (j > 0 && ccc_of(out[j - 1]) > c) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = x;
  }
  return k;
}

int ml_uc_is_mn(uint32_t cp) {
  return cp >= 0x300 && cp < 0x110000 && range_find(ml_mn_lo, ml_mn_hi, NELEM(ml_mn_lo), cp) >= 0;
}

size_t ml_uc_lower(uint32_t cp, uint32_t out[2]) {
  for (int i = 0; i < NELEM(ml_lower2_cp); i++)
    if (ml_lower2_cp[i] == cp) {
      out[0] = ml_lower2_to[2 * i];
      out[1] = ml_lower2_to[2 * i + 1];
      return 2;
    }
  out[0] = cp;
  if (cp >= 'A' && cp <= 'Z') out[0] = cp + 32;
  else if (cp >= 0xC0 && cp < 0x110000) {
    int a = 0, b = NELEM(ml_lower_cp) - 1;
    while (a <= b) {
      int m = (a + b) / 2;
      if (cp < ml_lower_cp[m]) b = m - 1;
      else if (cp > ml_lower_cp[m]) a = m + 1;
      else {
        out[0] = ml_lower_to[m];
        break;
      }
    }
  }
  return 1;
}

/* The primary composite of (a, b), or 0. */
static uint32_t compose(uint32_t a, uint32_t b) {
  if (a - HG_LBASE < (uint32_t)HG_LCOUNT && b - HG_VBASE < (uint32_t)HG_VCOUNT)
    return HG_SBASE + ((a - HG_LBASE) * HG_VCOUNT + (b - HG_VBASE)) * HG_TCOUNT;
  if (a - HG_SBASE < (uint32_t)HG_SCOUNT && (a - HG_SBASE) % HG_TCOUNT == 0 &&
      b - HG_TBASE - 1 < (uint32_t)(HG_TCOUNT - 1))
    return a + (b - HG_TBASE);
  int lo = 0, hi = NELEM(ml_comp_first) - 1;
  while (lo <= hi) {
    int m = (lo + hi) / 2;
    if (a < ml_comp_first[m] || (a == ml_comp_first[m] && b < ml_comp_second[m])) hi = m - 1;
    else if (a > ml_comp_first[m] || b > ml_comp_second[m]) lo = m + 1;
    else return ml_comp_result[m];
  }
  return 0;
}

/* NFC of one run: decompose, reorder, compose. */
static size_t nfc_run(const uint32_t *in, size_t n, uint32_t *out) {
  size_t m = 0;
  for (size_t i = 0; i < n; i++) m += decompose(in[i], out + m);

  /* canonical ordering: stable insertion sort of each run of non-starters by class */
  for (size_t i = 1; i < m; i++) {
    int c = ccc_of(out[i]);
    if (c == 0) continue;
    uint32_t x = out[i];
    size_t j = i;
    while (j > 0 && ccc_of(out[j - 1]) > c) {
      out[j] = out[j - 1];
      j--;
    }
    out[j] = x;
  }

  /* canonical composition: a character combines with the last starter unless a character
   * of the same or higher class (or a starter) stands between them */
  size_t w = 0, starter = 0;
  int have_starter = 0, last_cc = 0;
  for (size_t i = 0; i < m; i++) {
    uint32_t c = out[i];
    int cc = ccc_of(c);
    if (have_starter && (w == starter + 1 || last_cc < cc)) {
      uint32_t comp = compose(out[starter], c);
      if (comp) {
        out[starter] = comp;
        continue;
      }
    }
    if (cc == 0) {
      starter = w;
      have_starter = 1;
    }
    last_cc = cc;
    out[w++] = c;
  }
  return w;
}

/* Only the runs of characters that may change are normalized, each with the starter before
 * it: a character with ccc 0 and NFC_QC Yes (no ML_UC_NFC flag) never combines with what
 * precedes it, so the text can be cut before it. */
size_t ml_nfc(const uint32_t *in, size_t n, uint32_t *out) {
  size_t i = 0, w = 0;
  while (i < n) {
    size_t e = i;
    while (e < n && !(ml_uc_flags(in[e]) & ML_UC_NFC)) e++;
    size_t s = e > i && e < n ? e - 1 : e; /* the starter before a run may compose with it */
    for (size_t j = i; j < s; j++) out[w++] = in[j];
    if (e == n) break;
    size_t f = e;
    while (f < n && (ml_uc_flags(in[f]) & ML_UC_NFC)) f++;
    w += nfc_run(in + s, f - s, out + w);
    i = f;
  }
  return w;
}

/* ---- pre-tokenizers ---- */

/* One regex of a chain. */
enum rx {
  RX_END = 0,
  RX_GPT2, RX_LLAMA3, RX_QWEN2,
  RX_PUNCT,        /* [\p{P}\$\+<=>\^~\|]+ */
  RX_PUNCT_FALCON, /* [\p{P}\$\+<=>\^~\|`]+ */
  RX_NUMS,         /* \p{N}+ */
  RX_NUM,          /* \p{N} */
  RX_DIGIT3,       /* [0-9][0-9][0-9] */
  RX_CRLF,         /* [\r\n] */
  RX_DS_LETTERS,   /* \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+ (cased letters as listed by DeepSeek) */
  RX_DS_PUNCT,     /* \s?[!-/:-~！-／：-～‘-‟　-。]+ */
  RX_WS_END,       /* \s+$ */
  RX_CJK,          /* [一-龥ࠀ-一가-퟿]+ */
  RX_SP_LETTERS,   /* \s?\p{L}+ */
  RX_SP_PUNCT,     /* \s?\p{P}+ */
  RX_NUM3,         /* \p{N}{1,3} */
  RX_HAN_KANA,     /* [一-龥ぁ-ゟ゠-ヿ]+ */
  RX_DS3,          /* DeepSeek V3's main regex (match_ds3) */
  RX_GPT4O,        /* GPT-4o's (o200k) regex, words split at case changes (match_gpt4o) */
  RX_TEKKEN,       /* the same without contractions, digits one by one (match_tekken) */
  RX_SEED_CODER,   /* split_llama3 with \p{N}{1} and no [\r\n]* after punctuation */
  RX_QWEN35        /* split_llama3 with \p{N}{1} and [\p{L}\p{M}] as letters */
};

static const uint8_t chains[ML_PRETOK_COUNT][7] = {
  [ML_PRETOK_NONE] = {RX_END},
  [ML_PRETOK_GPT2] = {RX_GPT2},
  [ML_PRETOK_LLAMA3] = {RX_LLAMA3},
  [ML_PRETOK_QWEN2] = {RX_QWEN2},
  [ML_PRETOK_DEFAULT] = {RX_PUNCT, RX_GPT2, RX_NUMS, RX_DIGIT3},
  [ML_PRETOK_FALCON] = {RX_PUNCT_FALCON, RX_GPT2, RX_DIGIT3},
  [ML_PRETOK_STARCODER] = {RX_NUM, RX_GPT2},
  [ML_PRETOK_DEEPSEEK_LLM] = {RX_CRLF, RX_DS_LETTERS, RX_DS_PUNCT, RX_WS_END, RX_CJK, RX_NUMS},
  [ML_PRETOK_DEEPSEEK_CODER] = {RX_CRLF, RX_SP_LETTERS, RX_SP_PUNCT, RX_CJK, RX_NUM},
  [ML_PRETOK_DEEPSEEK3] = {RX_NUM3, RX_HAN_KANA, RX_DS3},
  [ML_PRETOK_GPT4O] = {RX_GPT4O},
  [ML_PRETOK_TEKKEN] = {RX_TEKKEN},
  [ML_PRETOK_SEED_CODER] = {RX_SEED_CODER},
  [ML_PRETOK_QWEN35] = {RX_QWEN35},
};

/* The letter class of DeepSeek LLM's second regex, as inclusive code point ranges. */
static const uint32_t ds_letters[][2] = {
  {0x41, 0x5A}, {0x61, 0x7A}, {0xB5, 0xB5}, {0xC0, 0xD6}, {0xD8, 0xF6}, {0xF8, 0x1BA},
  {0x1BC, 0x1BF}, {0x1C4, 0x293}, {0x295, 0x2AF}, {0x370, 0x373}, {0x376, 0x377},
  {0x37B, 0x37D}, {0x37F, 0x37F}, {0x386, 0x386}, {0x388, 0x38A}, {0x38C, 0x38C},
  {0x38E, 0x3A1}, {0x3A3, 0x3F5}, {0x3F7, 0x481}, {0x48A, 0x52F}, {0x531, 0x556},
  {0x10A0, 0x10C5}, {0x13A0, 0x13F5}, {0x13F8, 0x13FD}, {0x1C90, 0x1CBA}, {0x1CBD, 0x1CBF},
  {0x1D00, 0x1D2B}, {0x1D6B, 0x1D77}, {0x1D79, 0x1D9A}, {0x1E00, 0x1F15}, {0x1F18, 0x1F1D},
  {0x1F20, 0x1F45}, {0x1F48, 0x1F4D}, {0x1F50, 0x1F57}, {0x1F59, 0x1F59}, {0x1F5B, 0x1F5B},
  {0x1F5D, 0x1F5D}, {0x1F5F, 0x1F7D}, {0x1F80, 0x1FB4}, {0x1FB6, 0x1FBC}, {0x1FBE, 0x1FBE},
  {0x1FC2, 0x1FC4}, {0x1FC6, 0x1FCC}, {0x1FD0, 0x1FD3}, {0x1FD6, 0x1FDB}, {0x1FE0, 0x1FEC},
  {0x1FF2, 0x1FF4}, {0x1FF6, 0x1FFC}, {0x2102, 0x2102}, {0x2107, 0x2107}, {0x210A, 0x2113},
  {0x2115, 0x2115}, {0x2119, 0x211D}, {0x2124, 0x2124}, {0x2126, 0x2126}, {0x2128, 0x2128},
  {0x212A, 0x212D}, {0x212F, 0x2134}, {0x2139, 0x2139}, {0x213C, 0x213F}, {0x2145, 0x2149},
  {0x214E, 0x214E}, {0x2183, 0x2184}, {0x2C00, 0x2C7B}, {0x2C7E, 0x2CE4}, {0x2CEB, 0x2CEE},
  {0x2CF2, 0x2CF3}, {0xA640, 0xA66D}, {0xA680, 0xA69B}, {0xA722, 0xA76F}, {0xA771, 0xA787},
  {0xA78B, 0xA78E}, {0xAB70, 0xABBF}, {0xFB00, 0xFB06}, {0xFB13, 0xFB17}, {0xFF21, 0xFF3A},
  {0xFF41, 0xFF5A}, {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
  {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943},
};

static int in_ranges(const uint32_t (*r)[2], int n, uint32_t c) {
  int a = 0, b = n - 1;
  while (a <= b) {
    int m = (a + b) / 2;
    if (c < r[m][0]) b = m - 1;
    else if (c > r[m][1]) a = m + 1;
    else return 1;
  }
  return 0;
}

/* Membership in the class of a simple regex. White space never belongs to the classes
 * written with explicit ranges: llama.cpp maps non-ASCII white space to \v before
 * matching them, and the ASCII ranges contain none. */
static int in_class(int rx, uint32_t c, uint8_t f) {
  switch (rx) {
  case RX_PUNCT:
  case RX_PUNCT_FALCON:
    if (f & ML_UC_P) return 1;
    return c == '$' || c == '+' || c == '<' || c == '=' || c == '>' || c == '^' || c == '~' ||
           c == '|' || (rx == RX_PUNCT_FALCON && c == '`');
  case RX_NUMS:
  case RX_NUM: return (f & ML_UC_N) != 0;
  case RX_DIGIT3: return c >= '0' && c <= '9';
  case RX_CRLF: return c == '\r' || c == '\n';
  case RX_DS_LETTERS: return !(f & ML_UC_WS) && in_ranges(ds_letters, NELEM(ds_letters), c);
  case RX_DS_PUNCT:
    if (f & ML_UC_WS) return 0;
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x7E) || (c >= 0xFF01 && c <= 0xFF0F) ||
           (c >= 0xFF1A && c <= 0xFF5E) || (c >= 0x2018 && c <= 0x201F) || (c >= 0x3000 && c <= 0x3002);
  case RX_CJK:
    if (f & ML_UC_WS) return 0;
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x0800 && c <= 0x4E00) || (c >= 0xAC00 && c <= 0xD7FF);
  case RX_HAN_KANA:
    return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x309F) || (c >= 0x30A0 && c <= 0x30FF);
  case RX_NUM3: return (f & ML_UC_N) != 0;
  case RX_SP_LETTERS: return (f & ML_UC_L) != 0;
  case RX_SP_PUNCT: return (f & ML_UC_P) != 0;
  default: return 0;
  }
}

/* End of the match of a simple regex starting exactly at p, or p if none. */
static uint32_t match_simple(int rx, const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi) {
  uint32_t q = p;
  switch (rx) {
  case RX_NUM:
  case RX_CRLF: return in_class(rx, cp[p], fl[p]) ? p + 1 : p;
  case RX_NUM3:
    while (q < hi && q - p < 3 && in_class(rx, cp[q], fl[q])) q++;
    return q;
  case RX_DIGIT3:
    if (hi - p >= 3 && in_class(rx, cp[p], fl[p]) && in_class(rx, cp[p + 1], fl[p + 1]) &&
        in_class(rx, cp[p + 2], fl[p + 2]))
      return p + 3;
    return p;
  case RX_DS_LETTERS:
  case RX_DS_PUNCT:
  case RX_SP_LETTERS:
  case RX_SP_PUNCT: /* \s?C+ */
    if ((fl[p] & ML_UC_WS) && p + 1 < hi && in_class(rx, cp[p + 1], fl[p + 1])) q = p + 1;
    break;
  default: break;
  }
  while (q < hi && in_class(rx, cp[q], fl[q])) q++;
  return q;
}

/* Split [lo, hi) by a simple regex: matches and the gaps between them become pieces. */
static uint32_t *split_simple(int rx, const uint32_t *cp, const uint8_t *fl, uint32_t lo, uint32_t hi,
                              uint32_t *w) {
  if (rx == RX_WS_END) { /* the trailing white space, if any */
    uint32_t s = hi;
    while (s > lo && (fl[s - 1] & ML_UC_WS)) s--;
    if (s > lo && s < hi) *w++ = s;
    *w++ = hi;
    return w;
  }
  uint32_t gap = lo;
  for (uint32_t p = lo; p < hi;) {
    uint32_t e = match_simple(rx, cp, fl, p, hi);
    if (e == p) {
      p++;
      continue;
    }
    if (gap < p) *w++ = p;
    *w++ = e;
    gap = p = e;
  }
  if (gap < hi) *w++ = hi;
  return w;
}

#define IS_L(i) (fl[i] & ML_UC_L)
#define IS_N(i) (fl[i] & ML_UC_N)
#define IS_WS(i) (fl[i] & ML_UC_WS)
#define IS_LNWS(i) (fl[i] & (ML_UC_L | ML_UC_N | ML_UC_WS))

/* 's|'t|'re|'ve|'m|'ll|'d at p (case-insensitive if ci): its length, or 0. */
static uint32_t contraction(const uint32_t *cp, uint32_t p, uint32_t hi, int ci) {
  if (cp[p] != '\'' || p + 1 >= hi) return 0;
  uint32_t a = cp[p + 1];
  if (ci && a >= 'A' && a <= 'Z') a += 32;
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (p + 2 >= hi) return 0;
  uint32_t b = cp[p + 2];
  if (ci && b >= 'A' && b <= 'Z') b += 32;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

/* The white space alternatives shared by the GPT-2 family: \s+(?!\S)|\s+, and for
 * Llama 3 first \s*[\r\n]+. Returns the end of the piece starting at p (p + 1 if p is not
 * white space: a lone character no alternative matches). */
static uint32_t split_space(const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi, int newlines) {
  uint32_t q = p, after_nl = 0;
  while (q < hi && IS_WS(q)) {
    if (newlines && (cp[q] == '\r' || cp[q] == '\n')) after_nl = q + 1;
    q++;
  }
  if (after_nl) return after_nl;
  if (q - p > 1 && q < hi) return q - 1; /* leave the last one to the next word */
  return q > p ? q : p + 1;
}

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static uint32_t *split_gpt2(const uint32_t *cp, const uint8_t *fl, uint32_t lo, uint32_t hi, uint32_t *w) {
  uint32_t p = lo;
  while (p < hi) {
    uint32_t n = contraction(cp, p, hi, 0);
    if (n) {
      *w++ = p += n;
      continue;
    }
    uint32_t q = p + (cp[p] == ' '); /* after the optional space */
    if (q < hi) {
      uint8_t cls = IS_L(q) ? ML_UC_L : IS_N(q) ? ML_UC_N : IS_WS(q) ? 0 : 0xFF;
      if (cls == ML_UC_L || cls == ML_UC_N) {
        while (q < hi && (fl[q] & cls)) q++;
        *w++ = p = q;
        continue;
      }
      if (cls == 0xFF) { /* [^\s\p{L}\p{N}]+ */
        while (q < hi && !IS_LNWS(q)) q++;
        *w++ = p = q;
        continue;
      }
    }
    *w++ = p = split_space(cp, fl, p, hi, 0);
  }
  return w;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max_digits}|
 *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * and its variants: L3_MARKS reads \p{L} as [\p{L}\p{M}] (qwen35), L3_NO_PUNCT_NL drops
 * the [\r\n]* after punctuation (seed-coder). */
enum { L3_MARKS = 1, L3_NO_PUNCT_NL = 2 };
static uint32_t *split_llama3(const uint32_t *cp, const uint8_t *fl, uint32_t lo, uint32_t hi,
                              uint32_t max_digits, int variant, uint32_t *w) {
  uint32_t p = lo;
  const uint8_t L = (variant & L3_MARKS) ? ML_UC_L | ML_UC_M : ML_UC_L, LNWS = L | ML_UC_N | ML_UC_WS;
  while (p < hi) {
    uint32_t c = cp[p], n = contraction(cp, p, hi, 1);
    if (n) {
      *w++ = p += n;
      continue;
    }
    /* [^\r\n\p{L}\p{N}]?L+ (a mark before a letter is in L itself when L3_MARKS) */
    if (c != '\r' && c != '\n' && !IS_N(p) && ((fl[p] & L) || (p + 1 < hi && (fl[p + 1] & L)))) {
      p++;
      while (p < hi && (fl[p] & L)) p++;
      *w++ = p;
      continue;
    }
    if (IS_N(p)) {
      uint32_t s = p;
      while (p < hi && IS_N(p) && p - s < max_digits) p++;
      *w++ = p;
      continue;
    }
    uint32_t q = p + (c == ' ');
    if (q < hi ? !(fl[q] & LNWS) : q > p) {
      while (q < hi && !(fl[q] & LNWS)) q++;
      if (!(variant & L3_NO_PUNCT_NL))
        while (q < hi && (cp[q] == '\r' || cp[q] == '\n')) q++;
      *w++ = p = q;
      continue;
    }
    *w++ = p = split_space(cp, fl, p, hi, 1);
  }
  return w;
}

static int ascii_punct(uint32_t c) {
  return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}
static int ascii_alpha(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }

/* The end of DeepSeek V3's match at p, or p if none of its alternatives matches there:
 * [ASCII punctuation][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+ */
static uint32_t match_ds3(const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi) {
  uint32_t c = cp[p], q;
  const uint8_t LM = ML_UC_L | ML_UC_M, PS = ML_UC_P | ML_UC_S;
  if (ascii_punct(c) && p + 1 < hi && ascii_alpha(cp[p + 1])) {
    for (q = p + 1; q < hi && ascii_alpha(cp[q]); q++) {}
    return q;
  }
  q = p;
  if (c != '\r' && c != '\n' && !(fl[p] & (ML_UC_L | PS)) && p + 1 < hi && (fl[p + 1] & LM)) q = p + 1;
  if (fl[q] & LM) {
    while (q < hi && (fl[q] & LM)) q++;
    return q;
  }
  q = p + (c == ' ');
  if (q < hi && (fl[q] & PS)) {
    while (q < hi && (fl[q] & PS)) q++;
    while (q < hi && (cp[q] == '\r' || cp[q] == '\n')) q++;
    return q;
  }
  return IS_WS(p) ? split_space(cp, fl, p, hi, 1) : p;
}

/* Upper/title-case and lower-case letters, for the case-splitting regexes. */
static int is_lut(uint32_t c) {
  if (c < 0x80) return c >= 'A' && c <= 'Z';
  return c < 0x110000 && range_find(ml_lu_lo, ml_lu_hi, NELEM(ml_lu_lo), c) >= 0;
}
static int is_ll(uint32_t c) {
  if (c < 0x80) return c >= 'a' && c <= 'z';
  return c < 0x110000 && range_find(ml_ll_lo, ml_ll_hi, NELEM(ml_ll_lo), c) >= 0;
}
/* [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}] and [\p{Ll}\p{Lm}\p{Lo}\p{M}] */
#define UPPERISH(i) ((fl[i] & ML_UC_M) || ((fl[i] & ML_UC_L) && !is_ll(cp[i])))
#define LOWERISH(i) ((fl[i] & ML_UC_M) || ((fl[i] & ML_UC_L) && !is_lut(cp[i])))

/* The end of GPT-4o's match at p:
 * [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|
 * [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|
 * \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * The first two alternatives are tried as a backtracking engine would: the optional
 * character first taken, then not; U* as long as W+ can still follow. */
static uint32_t match_o200k(const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi, int tekken) {
  uint32_t c = cp[p], q;
  int pre = c != '\r' && c != '\n' && !(fl[p] & (ML_UC_L | ML_UC_N));
  for (int alt = 1; alt <= 2; alt++)
    for (int with = pre; with >= 0; with--) {
      uint32_t a = p + (uint32_t)with, u = a, e;
      if (a >= hi) continue;
      while (u < hi && UPPERISH(u)) u++;
      if (alt == 1) { /* U* W+: W+ starts at u, or at the last W inside the U run */
        uint32_t s = u;
        if (!(u < hi && LOWERISH(u))) {
          for (s = u; s > a && !LOWERISH(s - 1); s--) {}
          if (s == a) continue;
          s--;
        }
        for (e = s; e < hi && LOWERISH(e); e++) {}
      } else { /* U+ W* */
        if (u == a) continue;
        for (e = u; e < hi && LOWERISH(e); e++) {}
      }
      return tekken ? e : e + contraction(cp, e, hi, 1);
    }
  if (fl[p] & ML_UC_N) {
    for (q = p; q < hi && q - p < (tekken ? 1u : 3u) && (fl[q] & ML_UC_N); q++) {}
    return q;
  }
  q = p + (c == ' ');
  if (q < hi && !IS_LNWS(q)) {
    while (q < hi && !IS_LNWS(q)) q++;
    while (q < hi && (cp[q] == '\r' || cp[q] == '\n' || cp[q] == '/')) q++;
    return q;
  }
  return IS_WS(p) ? split_space(cp, fl, p, hi, 1) : p;
}
static uint32_t match_gpt4o(const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi) {
  return match_o200k(cp, fl, p, hi, 0);
}
/* Mistral's tekken: the same alternatives without the contractions, and \p{N} */
static uint32_t match_tekken(const uint32_t *cp, const uint8_t *fl, uint32_t p, uint32_t hi) {
  return match_o200k(cp, fl, p, hi, 1);
}

/* Split [lo, hi) by a regex given as its match function: matches and the gaps between
 * them (where no alternative matches) become pieces. */
static uint32_t *split_by(uint32_t (*match)(const uint32_t *, const uint8_t *, uint32_t, uint32_t), const uint32_t *cp,
                          const uint8_t *fl, uint32_t lo, uint32_t hi, uint32_t *w) {
  uint32_t gap = lo;
  for (uint32_t p = lo; p < hi;) {
    uint32_t e = match(cp, fl, p, hi);
    if (e == p) {
      p++;
      continue;
    }
    if (gap < p) *w++ = p;
    *w++ = e;
    gap = p = e;
  }
  if (gap < hi) *w++ = hi;
  return w;
}

static uint32_t *split_one(int rx, const uint32_t *cp, const uint8_t *fl, uint32_t lo, uint32_t hi, uint32_t *w) {
  switch (rx) {
  case RX_DS3: return split_by(match_ds3, cp, fl, lo, hi, w);
  case RX_GPT4O: return split_by(match_gpt4o, cp, fl, lo, hi, w);
  case RX_GPT2: return split_gpt2(cp, fl, lo, hi, w);
  case RX_TEKKEN: return split_by(match_tekken, cp, fl, lo, hi, w);
  case RX_LLAMA3: return split_llama3(cp, fl, lo, hi, 3, 0, w);
  case RX_QWEN2: return split_llama3(cp, fl, lo, hi, 1, 0, w);
  case RX_SEED_CODER: return split_llama3(cp, fl, lo, hi, 1, L3_NO_PUNCT_NL, w);
  case RX_QWEN35: return split_llama3(cp, fl, lo, hi, 1, L3_MARKS, w);
  default: return split_simple(rx, cp, fl, lo, hi, w);
  }
}

size_t ml_pretok_split(ml_pretok kind, const uint32_t *cp, const uint8_t *fl, size_t n,
                       uint32_t *ends, uint32_t *tmp) {
  if (n == 0) return 0;
  if ((unsigned)kind >= ML_PRETOK_COUNT) kind = ML_PRETOK_NONE;
  const uint8_t *chain = chains[kind];
  /* Ping-pong between the two buffers so the result lands in ends. */
  int steps = 0;
  while (steps < 7 && chain[steps] != RX_END) steps++;
  uint32_t *cur = (steps % 2 == 0) ? ends : tmp, *nxt = (cur == ends) ? tmp : ends;
  cur[0] = (uint32_t)n;
  size_t count = 1;
  for (int s = 0; s < steps; s++) {
    uint32_t *w = nxt, lo = 0;
    for (size_t i = 0; i < count; i++) {
      w = split_one(chain[s], cp, fl, lo, cur[i], w);
      lo = cur[i];
    }
    count = (size_t)(w - nxt);
    uint32_t *t = cur;
    cur = nxt;
    nxt = t;
  }
  return count;
}
