/* model.c: loading a GGUF model: architecture, hyper-parameters, and every weight checked
 * for presence, type and shape before anything runs. Weights stay in the mapping (views);
 * only small vectors in another float type (norms, biases) are converted to f32 copies. */
#include "model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "arch.h"
#include "common.h"
#include "registry.h"

#define MAX_DIM (INT64_C(1) << 20)

void ml_model_retain(ml_model *m) { __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED); }

static void release_tensor(ml_tensor *t) {
  if (t->storage) ml_tensor_release(t);
}

static void model_free(ml_model *m) {
  ml_registry_forget(m);
  if (m->lw) {
    for (int64_t i = 0; i < m->hp.n_layer; i++) {
      ml_layer_w *w = &m->lw[i];
      ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
      for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) ml_weight_release(ws[j]);
    }
    ml_free(m->lw);
  }
  ml_weight_release(&m->output_w);
  pthread_mutex_destroy(&m->prep_mu);
  release_tensor(&m->tok_embd);
  release_tensor(&m->output_norm);
  release_tensor(&m->output);
  if (m->layers) {
    for (int64_t i = 0; i < m->hp.n_layer; i++) {
      ml_layer *L = &m->layers[i];
      ml_tensor *ts[] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->wo, &L->bq, &L->bk, &L->bv,
                         &L->q_norm, &L->k_norm, &L->ffn_norm, &L->w_gate, &L->w_up, &L->w_down};
      for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) release_tensor(ts[j]);
    }
    ml_free(m->layers);
  }
  ml_vocab_free(m->vocab);
  if (m->storage) ml_storage_release(m->storage);
  ml_gguf_release(m->gguf);
  ml_free(m->rope_inv_freq);
  ml_free(m->path);
  ml_free(m->arch_name);
  ml_free(m);
}

void ml_model_release(ml_model *m) {
  if (m && __atomic_sub_fetch(&m->refcount, 1, __ATOMIC_ACQ_REL) == 0) model_free(m);
}

static void release_gguf(void *g) { ml_gguf_release(g); }

static char *dup_str(const char *s, size_t n) {
  char *d = ml_alloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = 0;
  }
  return d;
}

/* ---- hyper-parameters ---- */

typedef struct loader {
  ml_model *m;
  char key[256];
} loader;

static const ml_gguf_kv *akey(loader *ld, const char *suffix) {
  snprintf(ld->key, sizeof ld->key, "%s.%s", ld->m->arch_name, suffix);
  return ml_gguf_find(ld->m->gguf, ld->key);
}

/* An integer hyper-parameter; arrays (per-layer values) must be uniform. */
static int hp_int(loader *ld, const char *suffix, int64_t def, int required, int64_t lo, int64_t hi, int64_t *out) {
  const ml_gguf_kv *kv = akey(ld, suffix);
  if (!kv) {
    if (required) {
      ml_seterr("%s: missing metadata key '%s'", ld->m->path, ld->key);
      return -1;
    }
    *out = def;
    return 0;
  }
  const ml_gguf_value *v = &kv->value;
  int64_t x;
  if (v->type == ML_GGUF_ARRAY && v->v.arr.n > 0 && v->v.arr.type != ML_GGUF_STRING && v->v.arr.type != ML_GGUF_ARRAY) {
    x = ml_gguf_arr_int(v, 0);
    for (uint64_t i = 1; i < v->v.arr.n; i++)
      if (ml_gguf_arr_int(v, i) != x) {
        ml_seterr("%s: '%s' differs between layers, which moonlm does not support", ld->m->path, ld->key);
        return -1;
      }
  } else if (v->type <= ML_GGUF_INT32 || v->type == ML_GGUF_UINT64 || v->type == ML_GGUF_INT64) {
    x = ml_gguf_get_int(ld->m->gguf, ld->key, INT64_MIN);
  } else {
    ml_seterr("%s: '%s' should be an integer, it is a %s", ld->m->path, ld->key, ml_gguf_vtype_name(v->type));
    return -1;
  }
  if (x < lo || x > hi) {
    ml_seterr("%s: '%s' = %lld is out of range [%lld, %lld]", ld->m->path, ld->key, (long long)x, (long long)lo,
              (long long)hi);
    return -1;
  }
  *out = x;
  return 0;
}

static int hp_float(loader *ld, const char *suffix, double def, double lo, double hi, double *out) {
  const ml_gguf_kv *kv = akey(ld, suffix);
  double x = kv ? ml_gguf_get_float(ld->m->gguf, ld->key, NAN) : def;
  if (!(x >= lo && x <= hi)) {
    ml_seterr("%s: '%s' is not a number in [%g, %g]", ld->m->path, ld->key, lo, hi);
    return -1;
  }
  *out = x;
  return 0;
}

static int read_hparams(loader *ld) {
  ml_hparams *hp = &ld->m->hp;
  if (hp_int(ld, "embedding_length", 0, 1, 1, MAX_DIM, &hp->n_embd) < 0) return -1;
  if (hp_int(ld, "block_count", 0, 1, 1, 4096, &hp->n_layer) < 0) return -1;
  if (hp_int(ld, "attention.head_count", 0, 1, 1, 4096, &hp->n_head) < 0) return -1;
  if (hp_int(ld, "attention.head_count_kv", hp->n_head, 0, 1, hp->n_head, &hp->n_head_kv) < 0) return -1;
  if (hp_int(ld, "feed_forward_length", 0, 1, 1, MAX_DIM, &hp->n_ff) < 0) return -1;
  if (hp_int(ld, "context_length", 2048, 0, 1, INT64_C(1) << 32, &hp->n_ctx_train) < 0) return -1;
  if (hp->n_head % hp->n_head_kv) {
    ml_seterr("%s: %lld query heads are not a multiple of %lld key/value heads", ld->m->path, (long long)hp->n_head,
              (long long)hp->n_head_kv);
    return -1;
  }
  int64_t kl, vl;
  if (hp_int(ld, "attention.key_length", hp->n_embd / hp->n_head, 0, 1, 8192, &kl) < 0) return -1;
  if (hp_int(ld, "attention.value_length", kl, 0, 1, 8192, &vl) < 0) return -1;
  if (kl != vl) {
    ml_seterr("%s: key length %lld differs from value length %lld", ld->m->path, (long long)kl, (long long)vl);
    return -1;
  }
  hp->head_dim = kl;
  if (hp_int(ld, "rope.dimension_count", hp->head_dim, 0, 0, hp->head_dim, &hp->n_rot) < 0) return -1;
  if (hp->n_rot % 2) {
    ml_seterr("%s: rope.dimension_count %lld is odd", ld->m->path, (long long)hp->n_rot);
    return -1;
  }
  if (hp_float(ld, "attention.layer_norm_rms_epsilon", 1e-5, 0, 1, &hp->norm_eps) < 0) return -1;
  if (hp_float(ld, "rope.freq_base", 10000.0, 1e-6, 1e30, &hp->rope_base) < 0) return -1;
  hp->rope_scale = 1.0;
  const ml_gguf_kv *st = akey(ld, "rope.scaling.type");
  double factor = 1.0;
  if (st && st->value.type == ML_GGUF_STRING) {
    const ml_gguf_str *s = &st->value.v.str;
    if (s->len == 6 && memcmp(s->s, "linear", 6) == 0) {
      if (hp_float(ld, "rope.scaling.factor", 1.0, 1e-6, 1e6, &factor) < 0) return -1;
      hp->rope_scale = 1.0 / factor;
    } else if (!(s->len == 4 && memcmp(s->s, "none", 4) == 0) && !(s->len == 6 && memcmp(s->s, "llama3", 6) == 0)) {
      ml_seterr("%s: rope scaling type '%.*s' is not supported (linear and llama3 are)", ld->m->path, (int)s->len, s->s);
      return -1;
    }
  } else if (akey(ld, "rope.scale_linear")) {
    if (hp_float(ld, "rope.scale_linear", 1.0, 1e-6, 1e6, &factor) < 0) return -1;
    hp->rope_scale = 1.0 / factor;
  }
  hp->rope_type = ld->m->arch->rope_type;
  if (ld->m->arch->fixup && ld->m->arch->fixup(ld->m->gguf, hp) < 0) return -1;
  return 0;
}

/* ---- tensors ---- */

static void shape_str(char *buf, size_t n, int nd, const int64_t *s) {
  if (nd == 1)
    snprintf(buf, n, "{%lld}", (long long)s[0]);
  else
    snprintf(buf, n, "{%lld, %lld}", (long long)s[0], (long long)s[1]);
}

/* Bind `out` to tensor `name` with the given shape (outermost first). Absent: an error when
 * required, else out stays empty. Vectors of a non-f32 float type become f32 copies. */
static int bind(loader *ld, ml_tensor *out, const char *name, int nd, int64_t d0, int64_t d1, int required) {
  ml_model *m = ld->m;
  int64_t idx = ml_gguf_find_tensor(m->gguf, name);
  if (idx < 0) {
    if (required) ml_seterr("%s: tensor '%s' is missing", m->path, name);
    return required ? -1 : 0;
  }
  const ml_gguf_tensor *info = &m->gguf->tensors[idx];
  int64_t want[2] = {d0, d1}, have[2] = {0, 0};
  int hn = info->n_dims;
  /* GGUF lists ne innermost first; trailing 1s are the same shape */
  while (hn > 1 && info->ne[hn - 1] == 1) hn--;
  if (hn == nd) {
    for (int i = 0; i < nd; i++) have[i] = info->ne[nd - 1 - i];
  }
  if (hn != nd || have[0] != want[0] || (nd == 2 && have[1] != want[1])) {
    char w[64], h[64];
    int64_t hs[4];
    for (int i = 0; i < hn && i < 4; i++) hs[i] = info->ne[hn - 1 - i];
    shape_str(w, sizeof w, nd, want);
    if (hn == 1 || hn == 2)
      shape_str(h, sizeof h, hn, hs);
    else
      snprintf(h, sizeof h, "%d dimensions", hn);
    ml_seterr("%s: tensor '%s' has shape %s, expected %s", m->path, name, h, w);
    return -1;
  }
  const ml_type_traits *tr = ml_type_traits_get(info->type);
  if (nd == 2 && !tr->to_float) {
    ml_seterr("%s: tensor '%s' has type %s, which moonlm cannot compute with", m->path, name, tr->name);
    return -1;
  }
  ml_tensor view;
  if (ml_tensor_init_on(&view, m->storage, m->gguf->data_offset + info->offset, info->type, nd, want) < 0) {
    ml_seterr("%s: tensor '%s': %s", m->path, name, ml_errmsg());
    return -1;
  }
  if (nd == 1 && info->type != ML_TYPE_F32) {
    int rc = ml_tensor_to(out, &view, ML_TYPE_F32);
    ml_tensor_release(&view);
    if (rc < 0) {
      ml_seterr("%s: tensor '%s' (%s) cannot be used as a vector: %s", m->path, name, tr->name, ml_errmsg());
      return -1;
    }
    return 0;
  }
  *out = view;
  return 0;
}

static int bind_layer(loader *ld, int64_t il) {
  ml_model *m = ld->m;
  ml_hparams *hp = &m->hp;
  ml_layer *L = &m->layers[il];
  int64_t nq = hp->n_head * hp->head_dim, nkv = hp->n_head_kv * hp->head_dim, E = hp->n_embd;
  char name[96];
#define NAME(s) (snprintf(name, sizeof name, "blk.%lld." s, (long long)il), name)
  if (bind(ld, &L->attn_norm, NAME("attn_norm.weight"), 1, E, 0, 1) < 0) return -1;
  if (bind(ld, &L->wq, NAME("attn_q.weight"), 2, nq, E, 1) < 0) return -1;
  if (bind(ld, &L->wk, NAME("attn_k.weight"), 2, nkv, E, 1) < 0) return -1;
  if (bind(ld, &L->wv, NAME("attn_v.weight"), 2, nkv, E, 1) < 0) return -1;
  if (bind(ld, &L->wo, NAME("attn_output.weight"), 2, E, nq, 1) < 0) return -1;
  int nb = m->arch->needs_qkv_bias;
  if (bind(ld, &L->bq, NAME("attn_q.bias"), 1, nq, 0, nb) < 0) return -1;
  if (bind(ld, &L->bk, NAME("attn_k.bias"), 1, nkv, 0, nb) < 0) return -1;
  if (bind(ld, &L->bv, NAME("attn_v.bias"), 1, nkv, 0, nb) < 0) return -1;
  int nn = m->arch->needs_qk_norm;
  if (bind(ld, &L->q_norm, NAME("attn_q_norm.weight"), 1, hp->head_dim, 0, nn) < 0) return -1;
  if (bind(ld, &L->k_norm, NAME("attn_k_norm.weight"), 1, hp->head_dim, 0, nn) < 0) return -1;
  if (bind(ld, &L->ffn_norm, NAME("ffn_norm.weight"), 1, E, 0, 1) < 0) return -1;
  if (bind(ld, &L->w_gate, NAME("ffn_gate.weight"), 2, hp->n_ff, E, 1) < 0) return -1;
  if (bind(ld, &L->w_up, NAME("ffn_up.weight"), 2, hp->n_ff, E, 1) < 0) return -1;
  if (bind(ld, &L->w_down, NAME("ffn_down.weight"), 2, E, hp->n_ff, 1) < 0) return -1;
#undef NAME
  return 0;
}

static int64_t vocab_size(loader *ld) {
  ml_model *m = ld->m;
  int64_t idx = ml_gguf_find_tensor(m->gguf, "token_embd.weight");
  if (idx >= 0 && m->gguf->tensors[idx].n_dims >= 2) return m->gguf->tensors[idx].ne[1];
  if (m->vocab) return ml_vocab_get_info(m->vocab)->n_tokens;
  return 0;
}

static int rope_freqs(loader *ld) {
  ml_model *m = ld->m;
  ml_hparams *hp = &m->hp;
  int64_t half = hp->n_rot / 2;
  ml_tensor ff = {0};
  if (bind(ld, &ff, "rope_freqs.weight", 1, half, 0, 0) < 0) return -1;
  m->rope_inv_freq = ml_alloc(sizeof(float) * (size_t)(half ? half : 1));
  if (!m->rope_inv_freq) {
    release_tensor(&ff);
    return -1;
  }
  for (int64_t i = 0; i < half; i++) {
    double f = pow(hp->rope_base, -2.0 * (double)i / (double)hp->n_rot) * hp->rope_scale;
    if (ff.storage) f /= ((const float *)ml_tensor_data(&ff))[i];
    m->rope_inv_freq[i] = (float)f;
  }
  release_tensor(&ff);
  return 0;
}

static size_t tensor_bytes(const ml_tensor *t) { return t->storage ? ml_tensor_nbytes(t) : 0; }

ml_model *ml_model_load(const char *path, const ml_model_opts *opts) {
  ml_model *m = ml_calloc(sizeof *m);
  if (!m) return NULL;
  m->refcount = 1;
  pthread_mutex_init(&m->prep_mu, NULL);
  m->vocab_only = opts && opts->vocab_only;
  if (!(m->path = dup_str(path, strlen(path)))) goto fail;
  m->gguf = ml_gguf_open(path, (m->vocab_only ? ML_GGUF_NO_TENSORS : 0) | (opts && opts->no_mmap ? ML_GGUF_READ : 0));
  if (!m->gguf) goto fail;
  const ml_gguf_str *an = ml_gguf_get_str(m->gguf, "general.architecture");
  if (!an) {
    ml_seterr("%s: no general.architecture key", path);
    goto fail;
  }
  if (!(m->arch_name = dup_str(an->s, an->len))) goto fail;
  if (ml_gguf_find(m->gguf, "tokenizer.ggml.model") && !(m->vocab = ml_vocab_load(m->gguf))) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", ml_errmsg());
    ml_seterr("%s: tokenizer: %s", path, msg);
    goto fail;
  }
  if (m->vocab_only) {
    if (!m->vocab) {
      ml_seterr("%s: the file has no tokenizer (tokenizer.ggml.model)", path);
      goto fail;
    }
    m->hp.n_vocab = ml_vocab_get_info(m->vocab)->n_tokens;
    return m;
  }
  m->arch = ml_arch_find(an->s, an->len);
  if (!m->arch) {
    ml_seterr("unsupported architecture '%s'", m->arch_name);
    goto fail;
  }
  if (!(m->storage = ml_storage_external((void *)m->gguf->base, m->gguf->size, release_gguf, m->gguf))) goto fail;
  ml_gguf_retain(m->gguf);
  loader ld = {m, {0}};
  if (read_hparams(&ld) < 0) goto fail;
  ml_hparams *hp = &m->hp;
  hp->n_vocab = vocab_size(&ld);
  if (hp->n_vocab < 1 || hp->n_vocab > (INT64_C(1) << 24)) {
    ml_seterr("%s: cannot tell the vocabulary size", path);
    goto fail;
  }
  if (m->vocab && ml_vocab_get_info(m->vocab)->n_tokens > hp->n_vocab) {
    ml_seterr("%s: the tokenizer has %d tokens but the embedding only %lld rows", path,
              ml_vocab_get_info(m->vocab)->n_tokens, (long long)hp->n_vocab);
    goto fail;
  }
  if (bind(&ld, &m->tok_embd, "token_embd.weight", 2, hp->n_vocab, hp->n_embd, 1) < 0) goto fail;
  if (bind(&ld, &m->output_norm, "output_norm.weight", 1, hp->n_embd, 0, 1) < 0) goto fail;
  if (bind(&ld, &m->output, "output.weight", 2, hp->n_vocab, hp->n_embd, 0) < 0) goto fail;
  if (!m->output.storage) {
    ml_tensor_view_of(&m->output, &m->tok_embd);
    m->tied_output = 1;
  }
  if (!(m->layers = ml_calloc(sizeof(ml_layer) * (size_t)hp->n_layer))) goto fail;
  for (int64_t il = 0; il < hp->n_layer; il++)
    if (bind_layer(&ld, il) < 0) goto fail;
  if (rope_freqs(&ld) < 0) goto fail;
  for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
    const ml_gguf_tensor *t = &m->gguf->tensors[i];
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d];
    m->n_params += n;
  }
  m->weight_bytes = tensor_bytes(&m->output) + tensor_bytes(&m->output_norm);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    ml_layer *L = &m->layers[il];
    m->weight_bytes += tensor_bytes(&L->wq) + tensor_bytes(&L->wk) + tensor_bytes(&L->wv) + tensor_bytes(&L->wo) +
                       tensor_bytes(&L->w_gate) + tensor_bytes(&L->w_up) + tensor_bytes(&L->w_down) +
                       tensor_bytes(&L->attn_norm) + tensor_bytes(&L->ffn_norm);
  }
  return m;
fail:
  model_free(m);
  return NULL;
}

/* ---- preparing the weights ---- */

/* Give back the pages of a weight whose packed copy now serves every product. The mapping is
 * private and read-only, so the kernel simply drops them (they fault back from the file if a
 * tensor view ever reads them). Only whole pages inside the tensor are dropped. */
static void drop_original(const ml_weight *pw) {
  if (!pw->packed) return;
  uintptr_t a = (uintptr_t)ml_tensor_data(&pw->w), e = a + ml_tensor_nbytes(&pw->w);
  uintptr_t pg = 4096, a0 = (a + pg - 1) & ~(pg - 1), e0 = e & ~(pg - 1);
  if (e0 > a0) madvise((void *)a0, e0 - a0, MADV_DONTNEED);
}

static int prep(ml_weight *pw, const ml_tensor *t, int drop) {
  if (ml_weight_prepare(pw, t, 0) < 0) {
    /* a weight no kernel takes is the model file's failure, not its caller's misuse */
    if (ml_errclass_get() == ML_ERR_MISUSE) ml_seterr("%s", ml_errmsg());
    return -1;
  }
  if (drop) drop_original(pw);
  return 0;
}

/* Pages can be dropped only from a mapping of the file (a copy in memory would be lost). */
static int droppable(const ml_model *m) { return m->gguf->mapped == 1; }

int ml_model_prepare(ml_model *m) {
  if (__atomic_load_n(&m->prepared, __ATOMIC_ACQUIRE)) return 0;
  pthread_mutex_lock(&m->prep_mu);
  int rc = 0;
  if (!m->prepared) {
    double t0 = 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    t0 = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    m->lw = ml_calloc(sizeof(ml_layer_w) * (size_t)m->hp.n_layer);
    rc = m->lw ? 0 : -1;
    for (int64_t i = 0; rc == 0 && i < m->hp.n_layer; i++) {
      const ml_layer *L = &m->layers[i];
      ml_layer_w *w = &m->lw[i];
      int d = droppable(m);
      if (prep(&w->wq, &L->wq, d) < 0 || prep(&w->wk, &L->wk, d) < 0 || prep(&w->wv, &L->wv, d) < 0 ||
          prep(&w->wo, &L->wo, d) < 0 || prep(&w->w_gate, &L->w_gate, d) < 0 || prep(&w->w_up, &L->w_up, d) < 0 ||
          prep(&w->w_down, &L->w_down, d) < 0)
        rc = -1;
    }
    /* a tied output shares token_embd, whose rows the embedding lookup still reads */
    if (rc == 0 && prep(&m->output_w, &m->output, !m->tied_output && droppable(m)) < 0) rc = -1;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    m->prepare_seconds = (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec - t0;
    if (rc == 0) {
      __atomic_store_n(&m->prepared, 1, __ATOMIC_RELEASE);
    } else if (m->lw) { /* undo, so a later call starts clean */
      for (int64_t i = 0; i < m->hp.n_layer; i++) {
        ml_layer_w *w = &m->lw[i];
        ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
        for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) ml_weight_release(ws[j]);
      }
      ml_free(m->lw);
      m->lw = NULL;
      ml_weight_release(&m->output_w);
    }
  }
  pthread_mutex_unlock(&m->prep_mu);
  return rc;
}
