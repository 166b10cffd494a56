/* context.c: contexts: the KV cache, scratch buffers, and the decode entry point, which
 * validates the whole batch (ids, sequences, free cells) before it touches anything, runs
 * it in chunks of n_batch tokens, and rolls the sequences back if a chunk fails. */
#include <string.h>

#include "arch.h"
#include "common.h"
#include "context.h"
#include "flash.h"
#include "kernels/dispatch.h"
#include "registry.h"
#include "rope.h"
#include "threads.h"

static int try_enter(ml_context *c) {
  int expected = 0;
  if (!__atomic_compare_exchange_n(&c->busy, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
    ml_seterr("context is in use by another thread");
    return -1;
  }
  return 0;
}

static void leave(ml_context *c) { __atomic_store_n(&c->busy, 0, __ATOMIC_RELEASE); }

static void context_free(ml_context *c) {
  ml_registry_forget(c);
  ml_kvcache_free(&c->kv);
  ml_kvcache_free(&c->kv_swa);
  ml_free(c->kv_layer);
  ml_free(c->layer_rope);
  float *bufs[] = {c->x, c->h, c->q, c->k, c->v, c->att, c->g, c->u, c->tmp, c->rows};
  for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ml_free(bufs[i]);
  ml_free(c->cell);
  ml_free(c->cell_swa);
  ml_free(c->pos);
  ml_free(c->seq);
  for (int i = 0; i < 3; i++) ml_free(c->act[i]);
  ml_free(c->att_scratch);
  ml_free(c->flash_work);
  ml_model_release(c->m);
  ml_free(c);
}

ml_context *ml_context_new(ml_model *m, const ml_context_opts *opts) {
  ml_context_opts o = {0};
  if (opts) o = *opts;
  if (m->vocab_only) {
    ml_seterr("the model was loaded with vocab_only: it has no weights to run");
    return NULL;
  }
  const ml_hparams *hp = &m->hp;
  if (o.n_ctx <= 0) o.n_ctx = ML_MIN(hp->n_ctx_train, 4096);
  if (o.n_ctx > (INT64_C(1) << 24)) {
    ml_misuse(2, "n_ctx = %lld is too large", (long long)o.n_ctx);
    return NULL;
  }
  if (o.n_batch <= 0) o.n_batch = 512;
  if (o.n_batch > ML_MAX_BATCH) o.n_batch = ML_MAX_BATCH;
  if (o.n_seq <= 0) o.n_seq = 1;
  if (o.n_seq > ML_MAX_SEQ) {
    ml_misuse(2, "seqs = %d: at most %d sequences", o.n_seq, ML_MAX_SEQ);
    return NULL;
  }
  if (!opts) o.kv_type = -1;
  if (o.kv_type < 0) o.kv_type = ML_TYPE_F16;
  int64_t row = hp->n_head_kv * hp->head_dim;
  if (o.kv_type != ML_TYPE_F32 && o.kv_type != ML_TYPE_F16 && o.kv_type != ML_TYPE_Q8_0) {
    ml_misuse(2, "kv_type must be f16, f32 or q8_0");
    return NULL;
  }
  if (o.kv_type == ML_TYPE_Q8_0 && hp->head_dim % 32) {
    ml_misuse(2, "kv_type q8_0 needs a head size that is a multiple of 32 (this model has %lld)", (long long)hp->head_dim);
    return NULL;
  }
  ml_context *c = ml_calloc(sizeof *c);
  if (!c) return NULL;
  c->refcount = 1;
  c->m = m;
  ml_model_retain(m);
  c->n_batch = o.n_batch;
  c->embeddings = o.embeddings;
  if (ml_registry_add_context(c) < 0) goto fail;
  /* global layers in kv; sliding-window layers in kv_swa, which holds for each sequence the
   * window, some slack for rewinding (truncate), and room for one chunk */
  int64_t n_swa_layers = 0;
  if (!(c->kv_layer = ml_alloc(sizeof(int64_t) * (size_t)hp->n_layer))) goto fail;
  if (!(c->layer_rope = ml_calloc(sizeof(float *) * (size_t)hp->n_layer))) goto fail;
  for (int64_t il = 0; il < hp->n_layer; il++)
    c->kv_layer[il] = ml_layer_is_swa(hp, il) ? n_swa_layers++ : il - n_swa_layers;
  int64_t swa_cells = 0;
  if (n_swa_layers) {
    c->swa_keep = hp->n_swa - 1 + ML_SWA_SLACK;
    swa_cells = ML_MIN(o.n_ctx, (int64_t)o.n_seq * c->swa_keep + o.n_batch);
  }
  if (ml_kvcache_init(&c->kv, o.n_ctx, hp->n_layer - n_swa_layers, row, (ml_type)o.kv_type, o.n_seq) < 0) goto fail;
  if (ml_kvcache_init(&c->kv_swa, swa_cells ? swa_cells : 1, n_swa_layers, row, (ml_type)o.kv_type, o.n_seq) < 0)
    goto fail;
  /* LongRoPE: the long factors when a sequence may run past the original context */
  c->rope = m->rope_inv_freq_long && o.n_ctx / o.n_seq > hp->n_ctx_orig ? m->rope_inv_freq_long : m->rope_inv_freq;
  /* the RoPE table of each layer, for context shifts before any decode (a state loaded
   * from a file): what the families pass (arch_*.c); attention.c records the table each
   * layer actually used once a chunk runs */
  for (int64_t il = 0; il < hp->n_layer; il++)
    c->layer_rope[il] = m->alibi_slopes || !hp->causal ? NULL
                        : ml_layer_is_swa(hp, il) && m->rope_inv_freq_swa ? m->rope_inv_freq_swa
                                                                         : c->rope;
  int64_t B = o.n_batch, E = hp->n_embd, nq = hp->n_head * hp->head_dim;
  int64_t ntmp = ML_MAX(nq + 2 * row, 2 * hp->n_ff);
  size_t f = sizeof(float);
  if (!(c->x = ml_alloc(f * (size_t)(B * E))) || !(c->h = ml_alloc(f * (size_t)(B * ML_MAX(E, nq)))) ||
      !(c->q = ml_alloc(f * (size_t)(B * nq))) || !(c->k = ml_alloc(f * (size_t)(B * row))) ||
      !(c->v = ml_alloc(f * (size_t)(B * row))) || !(c->att = ml_alloc(f * (size_t)(B * nq))) ||
      !(c->g = ml_alloc(f * (size_t)(B * hp->n_ff))) || !(c->u = ml_alloc(f * (size_t)(B * hp->n_ff))) ||
      !(c->tmp = ml_alloc(f * (size_t)(B * ntmp))) || !(c->rows = ml_alloc(f * (size_t)(B * E))) ||
      !(c->cell = ml_alloc(sizeof(int32_t) * (size_t)B)) || !(c->cell_swa = ml_alloc(sizeof(int32_t) * (size_t)B)) ||
      !(c->pos = ml_alloc(sizeof(int64_t) * (size_t)B)) || !(c->seq = ml_alloc(sizeof(int32_t) * (size_t)B)))
    goto fail;
  c->max_threads = ml_max_threads();
  c->att_per_thread = ((size_t)E + 15) & ~(size_t)15; /* 64-byte aligned slices */
  if (!(c->att_scratch = ml_alloc(sizeof(float) * c->att_per_thread * (size_t)c->max_threads))) goto fail;
  ml_flash_args shape = {.n_head = hp->n_head, .n_head_kv = hp->n_head_kv, .head_dim = hp->head_dim};
  if (!(c->flash_work = ml_alloc(ml_flash_work_bytes(&shape, c->max_threads)))) goto fail;
  return c;
fail:
  context_free(c);
  return NULL;
}

void ml_context_retain(ml_context *c) { __atomic_add_fetch(&c->refcount, 1, __ATOMIC_RELAXED); }

void ml_context_release(ml_context *c) {
  if (c && __atomic_sub_fetch(&c->refcount, 1, __ATOMIC_ACQ_REL) == 0) context_free(c);
}

ml_model *ml_context_model(const ml_context *c) { return c->m; }
int64_t ml_context_n_ctx(const ml_context *c) { return c->kv.n_cells; }
int ml_context_n_seq(const ml_context *c) { return c->kv.n_seq; }
ml_type ml_context_kv_type(const ml_context *c) { return c->kv.type; }
int64_t ml_context_used(const ml_context *c) { return c->kv.n_used; }
size_t ml_context_kv_bytes(const ml_context *c) {
  return 2 * c->kv.row_bytes * ((size_t)c->kv.n_cells * (size_t)c->kv.n_layer +
                                (size_t)c->kv_swa.n_cells * (size_t)c->kv_swa.n_layer);
}

static int check_seq(const ml_context *c, int seq, int input) {
  if (seq < 0 || seq >= c->kv.n_seq) {
    ml_misuse(input, "sequence %d out of range (the context has %d: 0 to %d)", seq, c->kv.n_seq, c->kv.n_seq - 1);
    return -1;
  }
  return 0;
}

/* Activation buffers big enough for n_batch rows of every prepared weight. */
static int ensure_act(ml_context *c) {
  const ml_model *m = c->m;
  size_t need = m->output.storage ? ml_mm_w_act_bytes(&m->output_w, c->n_batch) : 0;
  for (int64_t i = 0; i < m->hp.n_layer; i++) {
    const ml_layer_w *w = &m->lw[i];
    const ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wqkv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
    for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++)
      if (ws[j]->w.storage) need = ML_MAX(need, ml_mm_w_act_bytes(ws[j], c->n_batch));
  }
  if (need <= c->act_bytes) return 0;
  for (int i = 0; i < 3; i++) {
    ml_free(c->act[i]);
    if (!(c->act[i] = ml_alloc(need))) {
      c->act_bytes = 0;
      return -1;
    }
  }
  c->act_bytes = need;
  return 0;
}

/* Keep the first n tokens of seq in both caches; returns how many are kept. A sliding-window
 * cache that no longer holds the window before position n cannot resume there: then the
 * whole sequence goes (0), and its caller decodes it again. */
static int64_t seq_truncate(ml_context *c, int seq, int64_t n) {
  if (n >= c->kv.len[seq]) return c->kv.len[seq];
  /* position n would read positions n - (n_swa - 1) .. n - 1 */
  if (c->kv_swa.n_layer && n > 0 && ML_MAX(n - (c->m->hp.n_swa - 1), 0) < c->kv_swa.off[seq]) n = 0;
  ml_kvcache_truncate(&c->kv, seq, n);
  ml_kvcache_truncate(&c->kv_swa, seq, n);
  return n;
}

/* An encoder reads each call on its own: its sequences start empty, must fit in one chunk
 * (every token attends to every other) and in the learned positions. */
static int check_encoder(ml_context *c, int64_t n, const int32_t *seq) {
  const ml_model *m = c->m;
  if (!m->hp.causal && n > c->n_batch) {
    ml_seterr("%lld tokens: an encoder (%s) reads its input in one pass of at most n_batch = %lld tokens",
                  (long long)n, m->arch->name, (long long)c->n_batch);
    return -1;
  }
  if (!m->pos_embd.storage) return 0;
  int64_t count[ML_MAX_SEQ] = {0};
  for (int64_t i = 0; i < n; i++)
    if (++count[seq[i]] > m->hp.n_ctx_train) {
      ml_seterr("sequence %d has more than %lld tokens, the most %s's learned positions allow", seq[i],
                    (long long)m->hp.n_ctx_train, m->arch->name);
      return -1;
    }
  return 0;
}

int ml_context_decode(ml_context *c, int64_t n, const int32_t *tokens, const int32_t *seq, const uint8_t *want,
                      float *logits, float *hidden) {
  const ml_model *m = c->m;
  const ml_hparams *hp = &m->hp;
  if (n <= 0) {
    ml_misuse(2, "nothing to decode (no tokens)");
    return -1;
  }
  for (int64_t i = 0; i < n; i++) {
    if (tokens[i] < 0 || tokens[i] >= hp->n_vocab) {
      ml_misuse(2, "token id %d out of range (the vocabulary has %lld: 0 to %lld)", tokens[i], (long long)hp->n_vocab,
                (long long)hp->n_vocab - 1);
      return -1;
    }
    if (check_seq(c, seq[i], 3) < 0) return -1;
  }
  if (logits && !m->output.storage) {
    ml_seterr("%s has no output head (it is an embedding model): ask for hidden states or embeddings", m->arch->name);
    return -1;
  }
  if (check_encoder(c, n, seq) < 0) return -1;
  if (ml_model_prepare(c->m) < 0) return -1;
  if (try_enter(c) < 0) return -1;
  if (ensure_act(c) < 0) {
    leave(c);
    return -1;
  }
  if (!hp->causal)
    for (int64_t i = 0; i < n; i++) seq_truncate(c, seq[i], 0);
  if (n > c->kv.n_cells - c->kv.n_used) {
    ml_seterr("context full (n_ctx = %lld)", (long long)c->kv.n_cells);
    leave(c);
    return -1;
  }
  int64_t start[ML_MAX_SEQ];
  for (int s = 0; s < c->kv.n_seq; s++) start[s] = c->kv.len[s];
  int64_t done = 0, out_rows = 0;
  int rc = 0, swa = c->kv_swa.n_layer > 0;
  while (done < n) {
    int64_t k = ML_MIN(c->n_batch, n - done);
    for (int64_t i = 0; i < k; i++) {
      int s = seq[done + i];
      c->seq[i] = s;
      c->pos[i] = c->kv.len[s];
      c->cell[i] = ml_kvcache_append(&c->kv, s); /* cannot fail: counted above */
      /* cannot fail either: between chunks a sequence holds at most swa_keep cells there */
      if (swa) c->cell_swa[i] = ml_kvcache_append(&c->kv_swa, s);
    }
    int64_t nw = 0;
    for (int64_t i = 0; i < k; i++) nw += want[done + i] != 0;
    rc = ml_forward(c, k, tokens + done, want + done, logits ? logits + out_rows * hp->n_vocab : NULL,
                    hidden ? hidden + out_rows * hp->n_embd : NULL);
    if (swa)
      for (int64_t i = 0; i < k; i++)
        ml_kvcache_evict(&c->kv_swa, c->seq[i], c->kv_swa.len[c->seq[i]] - c->swa_keep);
    if (rc < 0) break;
    out_rows += nw;
    done += k;
  }
  if (rc < 0)
    for (int s = 0; s < c->kv.n_seq; s++) seq_truncate(c, s, start[s]);
  if (!hp->causal) /* nothing is kept between an encoder's calls */
    for (int64_t i = 0; i < n; i++) seq_truncate(c, seq[i], 0);
  leave(c);
  return rc;
}

int64_t ml_context_pos(const ml_context *c, int seq) {
  if (check_seq(c, seq, 2) < 0) return -1;
  return c->kv.len[seq];
}

int ml_context_clear(ml_context *c, int seq) {
  if (seq >= 0 && check_seq(c, seq, 2) < 0) return -1;
  if (try_enter(c) < 0) return -1;
  for (int s = 0; s < c->kv.n_seq; s++)
    if (seq < 0 || s == seq) seq_truncate(c, s, 0);
  leave(c);
  return 0;
}

int64_t ml_context_truncate(ml_context *c, int seq, int64_t n) {
  if (check_seq(c, seq, 2) < 0) return -1;
  if (n < 0) {
    ml_misuse(3, "cannot keep %lld tokens", (long long)n);
    return -1;
  }
  if (try_enter(c) < 0) return -1;
  int64_t kept = seq_truncate(c, seq, n);
  leave(c);
  return kept;
}

int ml_context_copy(ml_context *c, int from, int to) {
  if (check_seq(c, from, 2) < 0 || check_seq(c, to, 3) < 0) return -1;
  if (try_enter(c) < 0) return -1;
  ml_kvcache_copy(&c->kv, from, to);
  ml_kvcache_copy(&c->kv_swa, from, to);
  leave(c);
  return 0;
}

/* ---- context shift ---- */

/* Rotate the keys of `cells` in one layer of kv by delta positions (RoPE as the forward
 * pass applies it, rope.c): every cell by the same angles, computed once. Rows go through
 * f32 (buf: one row, then the n_rot angles). */
static void rotate_keys(const ml_context *c, const ml_kvcache *kv, int64_t layer, const float *inv_freq,
                        const int32_t *cells, int64_t n, int64_t delta, float *buf) {
  const ml_hparams *hp = &c->m->hp;
  const ml_rowops *ro = ml_rowops_get();
  const ml_type_traits *tr = ml_type_traits_get(kv->type);
  int64_t row = kv->row, half = hp->n_rot / 2;
  float *cs = buf + row, *sn = cs + half;
  ml_rope_angles(cs, sn, half, inv_freq, 1.0f, delta);
  for (int64_t i = 0; i < n; i++) {
    uint8_t *p = ml_kvcache_k(kv, layer, cells[i]);
    if (kv->type == ML_TYPE_F32) memcpy(buf, p, sizeof(float) * (size_t)row);
    else if (kv->type == ML_TYPE_F16) ro->f16_to_f32((const ml_fp16 *)p, buf, row);
    else tr->to_float(p, buf, row);
    ml_rope_apply(buf, hp->n_head_kv, hp->head_dim, hp->n_rot, hp->rope_type == ML_ROPE_NEOX, cs, sn);
    if (kv->type == ML_TYPE_F32) memcpy(p, buf, sizeof(float) * (size_t)row);
    else if (kv->type == ML_TYPE_F16) ro->f32_to_f16(buf, (ml_fp16 *)p, row);
    else tr->from_float(buf, p, row);
  }
}

int ml_context_shift(ml_context *c, int seq, int64_t n_keep, int64_t n_discard) {
  const ml_model *m = c->m;
  const ml_hparams *hp = &m->hp;
  if (check_seq(c, seq, 2) < 0) return -1;
  int64_t len = c->kv.len[seq];
  if (n_keep < 0 || n_keep > len) {
    ml_misuse(3, "cannot keep %lld tokens of the %lld in sequence %d", (long long)n_keep, (long long)len, seq);
    return -1;
  }
  if (n_discard < 0 || n_discard > len - n_keep) {
    ml_misuse(4, "cannot discard %lld tokens after the %lld kept (sequence %d has %lld)", (long long)n_discard,
              (long long)n_keep, seq, (long long)len);
    return -1;
  }
  if (n_discard == 0) return 0;
  if (!hp->causal || m->pos_embd.storage) {
    ml_seterr("%s cannot shift its context: its positions are learned, not rotary or ALiBi", m->arch->name);
    return -1;
  }
  if (try_enter(c) < 0) return -1;
  int64_t a = n_keep, b = n_keep + n_discard;
  if (!ml_kvcache_shift_fits(&c->kv, seq, a, b) || !ml_kvcache_shift_fits(&c->kv_swa, seq, a, b)) {
    ml_seterr("context full (n_ctx = %lld): no free cells to copy the shifted cells that other sequences share",
              (long long)c->kv.n_cells);
    leave(c);
    return -1;
  }
  size_t per = (size_t)(c->kv.row + hp->n_rot + 16); /* a thread's row and angles */
  float *buf = ml_alloc(sizeof(float) * per * (size_t)c->max_threads);
  if (!buf) {
    leave(c);
    return -1;
  }
  int64_t first[2], moved[2];
  ml_kvcache *caches[2] = {&c->kv, &c->kv_swa};
  for (int i = 0; i < 2; i++) moved[i] = caches[i]->n_layer ? ml_kvcache_shift(caches[i], seq, a, b, &first[i]) : 0;
  /* the keys of the moved cells, every layer with RoPE, in parallel over layers */
  int64_t nl = hp->n_layer;
  int nth = ml_threads_for(ML_WORK_ELEMS, (double)nl * (double)(moved[0] + moved[1]) * (double)c->kv.row);
#pragma omp parallel for num_threads(nth) schedule(dynamic, 1)
  for (int64_t il = 0; il < nl; il++) {
    int swa = ml_layer_is_swa(hp, il);
    const ml_kvcache *kv = caches[swa];
    if (c->layer_rope[il] && moved[swa])
      rotate_keys(c, kv, c->kv_layer[il], c->layer_rope[il], kv->cells[seq] + first[swa], moved[swa], -n_discard,
                  buf + per * (size_t)ml_thread_id());
  }
  ml_free(buf);
  leave(c);
  return 0;
}

/* ---- state: a header, then per layer of kv the K and V rows of positions [0, len), then
 * per layer of kv_swa those of [off, len) ---- */

#define STATE_MAGIC 0x324b4c4du /* "MLK2" */

typedef struct state_head {
  uint32_t magic, type;
  int64_t n_layer, n_layer_swa, row, len, off;
} state_head;

static size_t state_bytes(const ml_context *c, int64_t len, int64_t off) {
  return sizeof(state_head) + 2 * c->kv.row_bytes * ((size_t)c->kv.n_layer * (size_t)len +
                                                     (size_t)c->kv_swa.n_layer * (size_t)(len - off));
}

size_t ml_context_state_size(const ml_context *c, int seq) {
  if (check_seq(c, seq, 2) < 0) return 0;
  return state_bytes(c, c->kv.len[seq], c->kv_swa.n_layer ? c->kv_swa.off[seq] : c->kv.len[seq]);
}

/* Copy the rows of positions [a, b) of seq's layers in cache kv to (save) or from p. */
static uint8_t *rows_io(const ml_kvcache *kv, int seq, int64_t a, int64_t b, uint8_t *p, int save) {
  for (int64_t l = 0; l < kv->n_layer; l++)
    for (int64_t t = a; t < b; t++) {
      int32_t cell = ml_kvcache_cell(kv, seq, t);
      uint8_t *k = ml_kvcache_k(kv, l, cell), *v = ml_kvcache_v(kv, l, cell);
      memcpy(save ? p : k, save ? k : p, kv->row_bytes);
      p += kv->row_bytes;
      memcpy(save ? p : v, save ? v : p, kv->row_bytes);
      p += kv->row_bytes;
    }
  return p;
}

int ml_context_state_save(const ml_context *c, int seq, void *buf, size_t cap) {
  size_t need = ml_context_state_size(c, seq);
  if (!need) return -1;
  if (cap < need) {
    ml_seterr("state buffer too small");
    return -1;
  }
  int64_t len = c->kv.len[seq], off = c->kv_swa.n_layer ? c->kv_swa.off[seq] : len;
  state_head h = {STATE_MAGIC, (uint32_t)c->kv.type, c->kv.n_layer, c->kv_swa.n_layer, c->kv.row, len, off};
  uint8_t *p = buf;
  memcpy(p, &h, sizeof h);
  p = rows_io(&c->kv, seq, 0, len, p + sizeof h, 1);
  rows_io(&c->kv_swa, seq, off, len, p, 1);
  return 0;
}

int ml_context_state_load(ml_context *c, int seq, const void *buf, size_t len) {
  ml_kvcache *kv = &c->kv, *ks = &c->kv_swa;
  state_head h;
  if (check_seq(c, seq, 2) < 0) return -1;
  if (len < sizeof h) {
    ml_seterr("saved state is truncated");
    return -1;
  }
  memcpy(&h, buf, sizeof h);
  if (h.magic != STATE_MAGIC || h.n_layer != kv->n_layer || h.n_layer_swa != ks->n_layer || h.row != kv->row ||
      h.type != (uint32_t)kv->type) {
    ml_seterr("saved state does not match this model and context (layers, head sizes or cache type differ)");
    return -1;
  }
  int64_t held = ks->n_layer ? h.len - h.off : 0;
  if (h.len < 0 || h.len > kv->n_cells || h.off < 0 || h.off > h.len || held > c->swa_keep ||
      len != state_bytes(c, h.len, ks->n_layer ? h.off : h.len)) {
    ml_seterr("saved state is damaged (its size does not match its header)");
    return -1;
  }
  if (try_enter(c) < 0) return -1;
  seq_truncate(c, seq, 0);
  if (h.len > kv->n_cells - kv->n_used || held > ks->n_cells - ks->n_used) {
    leave(c);
    ml_seterr("context full (n_ctx = %lld)", (long long)kv->n_cells);
    return -1;
  }
  for (int64_t t = 0; t < h.len; t++) ml_kvcache_append(kv, seq);
  if (ks->n_layer) {
    ks->len[seq] = ks->off[seq] = h.off;
    for (int64_t t = h.off; t < h.len; t++) ml_kvcache_append(ks, seq);
  }
  const uint8_t *p = (const uint8_t *)buf + sizeof h;
  p = rows_io(kv, seq, 0, h.len, (uint8_t *)p, 0);
  rows_io(ks, seq, h.off, h.len, (uint8_t *)p, 0);
  leave(c);
  return 0;
}
