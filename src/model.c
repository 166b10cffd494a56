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
#include "kernels/dispatch.h"
#include "common.h"
#include "grammar.h"
#include "registry.h"
#include "rope.h"

#define MAX_DIM (INT64_C(1) << 20)

void ml_model_retain(ml_model *m) { __atomic_add_fetch(&m->refcount, 1, __ATOMIC_RELAXED); }

static void release_tensor(ml_tensor *t) {
  if (t->storage) ml_tensor_release(t);
}

/* Every tensor field of a layer, and every matrix of its prepared weights. */
#define LAYER_TENSORS(L)                                                                                  \
  {&L->attn_norm, &L->attn_norm_b, &L->wq, &L->wk, &L->wv, &L->wo, &L->wqkv, &L->bq, &L->bk, &L->bv,      \
   &L->bqkv, &L->bo, &L->q_norm, &L->k_norm, &L->attn_post_norm, &L->attn_out_norm, &L->attn_out_norm_b, \
   &L->ffn_norm, &L->ffn_norm_b, &L->w_gate, &L->w_up, &L->w_down, &L->b_up, &L->b_down,                 \
   &L->ffn_post_norm, &L->out_norm, &L->out_norm_b}

static void release_layer_w(ml_layer_w *w) {
  ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wqkv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
  for (size_t j = 0; j < sizeof ws / sizeof ws[0]; j++) ml_weight_release(ws[j]);
}

static void model_free(ml_model *m) {
  ml_registry_forget(m);
  if (m->lw) {
    for (int64_t i = 0; i < m->hp.n_layer; i++) release_layer_w(&m->lw[i]);
    ml_free(m->lw);
  }
  ml_weight_release(&m->output_w);
  pthread_mutex_destroy(&m->prep_mu);
  ml_tensor *gs[] = {&m->tok_embd, &m->pos_embd, &m->tok_types, &m->tok_norm, &m->tok_norm_b, &m->output_norm,
                     &m->output_norm_b, &m->output, &m->rope_freqs, &m->rope_long, &m->rope_short,
                     &m->cls, &m->cls_b, &m->cls_out, &m->cls_out_b};
  for (size_t j = 0; j < sizeof gs / sizeof gs[0]; j++) release_tensor(gs[j]);
  if (m->layers) {
    for (int64_t i = 0; i < m->hp.n_layer; i++) {
      ml_layer *L = &m->layers[i];
      ml_tensor *ts[] = LAYER_TENSORS(L);
      for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) release_tensor(ts[j]);
    }
    ml_free(m->layers);
  }
  ml_gvocab_release(m->gvocab);
  ml_vocab_free(m->vocab);
  if (m->storage) ml_storage_release(m->storage);
  ml_gguf_release(m->gguf);
  ml_free(m->rope_inv_freq);
  ml_free(m->rope_inv_freq_long);
  ml_free(m->rope_inv_freq_swa);
  ml_free(m->alibi_slopes);
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
  uint8_t *used; /* (n_tensors) bound by a declaration */
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

static int hp_bool(loader *ld, const char *suffix, int def, int *out) {
  const ml_gguf_kv *kv = akey(ld, suffix);
  if (!kv) {
    *out = def;
    return 0;
  }
  if (kv->value.type != ML_GGUF_BOOL) {
    ml_seterr("%s: '%s' should be a boolean, it is a %s", ld->m->path, ld->key, ml_gguf_vtype_name(kv->value.type));
    return -1;
  }
  *out = kv->value.v.u != 0;
  return 0;
}

/* The family's own keys (arch.h), into their ml_hparams fields. */
static int read_arch_keys(loader *ld, const ml_key_decl *k) {
  ml_hparams *hp = &ld->m->hp;
  for (; k && k->suffix; k++) {
    void *field = (char *)hp + k->offset;
    int64_t i;
    switch (k->kind) {
    case ML_KEY_INT:
      if (hp_int(ld, k->suffix, (int64_t)k->def, k->required, (int64_t)k->lo, (int64_t)k->hi, field) < 0) return -1;
      break;
    case ML_KEY_UINT_ENUM:
      if (hp_int(ld, k->suffix, (int64_t)k->def, k->required, (int64_t)k->lo, (int64_t)k->hi, &i) < 0) return -1;
      *(int *)field = (int)i;
      break;
    case ML_KEY_FLOAT:
      if (k->required && !akey(ld, k->suffix)) {
        ml_seterr("%s: missing metadata key '%s'", ld->m->path, ld->key);
        return -1;
      }
      if (hp_float(ld, k->suffix, k->def, k->lo, k->hi, field) < 0) return -1;
      break;
    case ML_KEY_BOOL:
      if (hp_bool(ld, k->suffix, (int)k->def, field) < 0) return -1;
      break;
    }
  }
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
  if (hp_float(ld, "rope.scaling.attn_factor", 1.0, 1e-6, 1e6, &hp->rope_attn_factor) < 0) return -1;
  if (hp_int(ld, "rope.scaling.original_context_length", hp->n_ctx_train, 0, 1, INT64_C(1) << 32, &hp->n_ctx_orig) < 0)
    return -1;
  /* what the families that need them change */
  hp->rope_type = ML_ROPE_NORM;
  hp->norm_eps = 1e-5;
  hp->causal = 1;
  hp->embd_scale = 1.0;
  hp->attn_scale = 1.0 / sqrt((double)hp->head_dim);
  const ml_arch *arch = ld->m->arch;
  if (read_arch_keys(ld, arch->keys) < 0) return -1;
  if (arch->hparams && arch->hparams(hp, ld->m->gguf, ld->m->path) < 0) return -1;
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
  if (ld->used) ld->used[idx] = 1;
  int64_t want[2] = {d0, d1}, have[2] = {0, 0};
  int hn = info->n_dims;
  /* GGUF lists ne innermost first; trailing 1s are the same shape */
  while (hn > 1 && info->ne[hn - 1] == 1) hn--;
  if (hn == nd) {
    for (int i = 0; i < nd; i++) have[i] = info->ne[nd - 1 - i];
  } else if (nd == 2 && hn == 1 && d0 == 1) { /* a matrix of one row */
    have[0] = 1;
    have[1] = info->ne[0];
    hn = 2;
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
  /* the type must serve the role: a matrix is multiplied (or its rows looked up) by the
   * kernels, a vector (norm, bias, factors) is read as floats */
  if (nd == 2 && (!tr->to_float || !ml_kernels_for(ML_LEVEL_REF)->vec_dot[info->type])) {
    ml_seterr("%s: tensor '%s' has type %s, which no matrix kernel takes", m->path, name, tr->name);
    return -1;
  }
  if (nd == 1 && info->type != ML_TYPE_F32 && info->type != ML_TYPE_F16 && info->type != ML_TYPE_BF16) {
    ml_seterr("%s: tensor '%s' has type %s; a vector of weights is f32, f16 or bf16", m->path, name, tr->name);
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

static int64_t dim_of(const ml_hparams *hp, int d) {
  switch ((ml_dim)d) {
  case ML_DIM_NONE: return 0;
  case ML_DIM_EMBD: return hp->n_embd;
  case ML_DIM_VOCAB: return hp->n_vocab;
  case ML_DIM_Q: return hp->n_head * hp->head_dim;
  case ML_DIM_KV: return hp->n_head_kv * hp->head_dim;
  case ML_DIM_QKV: return (hp->n_head + 2 * hp->n_head_kv) * hp->head_dim;
  case ML_DIM_FF: return hp->n_ff;
  case ML_DIM_FF2: return 2 * hp->n_ff;
  case ML_DIM_HEAD: return hp->head_dim;
  case ML_DIM_ROT2: return hp->n_rot / 2;
  case ML_DIM_POS: return hp->n_ctx_train;
  case ML_DIM_TYPES: return hp->n_token_types;
  case ML_DIM_CLASSES: return hp->n_classes;
  }
  return 0;
}

/* Bind every tensor the family declares, per layer for ML_T_LAYER ones. */
static int bind_declared(loader *ld) {
  ml_model *m = ld->m;
  const ml_hparams *hp = &m->hp;
  char name[128];
  for (int64_t il = -1; il < hp->n_layer; il++) {
    for (const ml_tensor_decl *d = m->arch->tensors; d->name; d++) {
      int layer = (d->flags & ML_T_LAYER) != 0;
      if ((il >= 0) != layer) continue;
      ml_tensor *out = (ml_tensor *)((char *)(layer ? (void *)&m->layers[il] : (void *)m) + d->offset);
      if (layer) snprintf(name, sizeof name, "blk.%lld.%s", (long long)il, d->name);
      else snprintf(name, sizeof name, "%s", d->name);
      int required = (d->flags & ML_T_REQUIRED) != 0;
      int nd = d->d1 == ML_DIM_NONE ? 1 : 2;
      if (bind(ld, out, name, nd, dim_of(hp, d->d0), dim_of(hp, d->d1), required) < 0) return -1;
    }
  }
  return 0;
}

/* A tensor no declaration names would be ignored: a variant of the family moonlm does not
 * implement (MPT with q/k LayerNorms, ...). Refuse it rather than compute something else. */
static int check_all_used(loader *ld) {
  ml_model *m = ld->m;
  for (uint64_t i = 0; i < m->gguf->n_tensors; i++)
    if (!ld->used[i]) {
      const ml_gguf_str *n = &m->gguf->tensors[i].name;
      ml_seterr("%s: tensor '%.*s' is not part of moonlm's %s (a variant of the architecture moonlm does not run)",
                m->path, (int)ML_MIN(n->len, 96), n->s, m->arch->name);
      return -1;
    }
  return 0;
}

static int64_t vocab_size(loader *ld) {
  ml_model *m = ld->m;
  int64_t idx = ml_gguf_find_tensor(m->gguf, "token_embd.weight");
  if (idx >= 0 && m->gguf->tensors[idx].n_dims >= 2) return m->gguf->tensors[idx].ne[1];
  if (m->vocab) return ml_vocab_get_info(m->vocab)->n_tokens;
  return 0;
}

/* Inverse frequencies base^(-2i/n_rot) * scale, divided by the factors when given. */
static float *rope_table(const ml_hparams *hp, double base, double scale, const ml_tensor *factors) {
  int64_t half = hp->n_rot / 2;
  float *t = ml_alloc(sizeof(float) * (size_t)(half ? half : 1));
  if (!t) return NULL;
  ml_rope_freqs(t, hp->n_rot, base, scale, factors && factors->storage ? ml_tensor_data(factors) : NULL);
  return t;
}

static int rope_tables(ml_model *m) {
  const ml_hparams *hp = &m->hp;
  const ml_tensor *short_f = m->rope_freqs.storage ? &m->rope_freqs : &m->rope_short;
  if (!(m->rope_inv_freq = rope_table(hp, hp->rope_base, hp->rope_scale, short_f))) return -1;
  if (m->rope_long.storage && !(m->rope_inv_freq_long = rope_table(hp, hp->rope_base, hp->rope_scale, &m->rope_long)))
    return -1;
  /* local layers never scale (gemma3) */
  if (hp->rope_base_swa > 0 && !(m->rope_inv_freq_swa = rope_table(hp, hp->rope_base_swa, 1.0, NULL))) return -1;
  return 0;
}

/* ALiBi slopes (rope.h) when the family has a max bias. */
static int alibi_slopes(ml_model *m) {
  const ml_hparams *hp = &m->hp;
  if (hp->alibi_bias <= 0) return 0;
  if (!(m->alibi_slopes = ml_alloc(sizeof(float) * (size_t)hp->n_head))) return -1;
  ml_alibi_slopes(m->alibi_slopes, hp->n_head, hp->alibi_bias);
  return 0;
}

static size_t tensor_bytes(const ml_tensor *t) { return t->storage ? ml_tensor_nbytes(t) : 0; }

/* Does the family declare a global tensor at this ml_model offset? */
static int declares(const ml_arch *a, size_t offset) {
  for (const ml_tensor_decl *d = a->tensors; d->name; d++)
    if (!(d->flags & ML_T_LAYER) && d->offset == offset) return 1;
  return 0;
}

ml_model *ml_model_load(const char *path, const ml_model_opts *opts) {
  ml_model *m = ml_calloc(sizeof *m);
  loader ld = {m, {0}, NULL};
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
  m->storage->readonly = 1; /* shared by every state that attaches the model */
  ml_gguf_retain(m->gguf);
  if (read_hparams(&ld) < 0) goto fail;
  ml_hparams *hp = &m->hp;
  hp->n_vocab = vocab_size(&ld);
  if (hp->n_vocab < 1 || hp->n_vocab > (INT64_C(1) << 24)) {
    ml_seterr("%s: cannot tell the vocabulary size", path);
    goto fail;
  }
  /* every token id has its row, and every row is a token the sampler may pick */
  if (m->vocab && ml_vocab_get_info(m->vocab)->n_tokens != hp->n_vocab) {
    ml_seterr("%s: the tokenizer has %d tokens but token_embd.weight has %lld rows", path,
              ml_vocab_get_info(m->vocab)->n_tokens, (long long)hp->n_vocab);
    goto fail;
  }
  if (!(m->layers = ml_calloc(sizeof(ml_layer) * (size_t)hp->n_layer))) goto fail;
  if (!(ld.used = ml_calloc(m->gguf->n_tensors ? (size_t)m->gguf->n_tensors : 1))) goto fail;
  if (bind_declared(&ld) < 0 || check_all_used(&ld) < 0) goto fail;
  ml_free(ld.used);
  ld.used = NULL;
  if (!m->output.storage && declares(m->arch, offsetof(ml_model, output))) {
    ml_tensor_view_of(&m->output, &m->tok_embd);
    m->tied_output = 1;
  }
  if (rope_tables(m) < 0 || alibi_slopes(m) < 0) goto fail;
  const ml_layer *L0 = &m->layers[0];
  m->main_type = (L0->wqkv.storage ? &L0->wqkv : &L0->wq)->type;
  for (uint64_t i = 0; i < m->gguf->n_tensors; i++) {
    const ml_gguf_tensor *t = &m->gguf->tensors[i];
    int64_t n = 1;
    for (int d = 0; d < t->n_dims; d++) n *= t->ne[d];
    m->n_params += n;
  }
  m->weight_bytes = tensor_bytes(&m->output) + tensor_bytes(&m->output_norm);
  for (int64_t il = 0; il < hp->n_layer; il++) {
    ml_layer *L = &m->layers[il];
    ml_tensor *ts[] = LAYER_TENSORS(L);
    for (size_t j = 0; j < sizeof ts / sizeof ts[0]; j++) m->weight_bytes += tensor_bytes(ts[j]);
  }
  return m;
fail:
  ml_free(ld.used);
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

/* the model this thread is preparing (a progress callback must not re-enter) */
static __thread const ml_model *preparing;

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int ml_model_prepare_progress(ml_model *m, ml_progress_fn progress, void *ud) {
  if (__atomic_load_n(&m->prepared, __ATOMIC_ACQUIRE)) return 0;
  if (preparing == m) {
    ml_seterr("the model's weights are being prepared (a use from inside the progress callback?)");
    return -1;
  }
  pthread_mutex_lock(&m->prep_mu);
  int rc = 0;
  if (!m->prepared) {
    double t0 = seconds();
    preparing = m;
    m->lw = ml_calloc(sizeof(ml_layer_w) * (size_t)m->hp.n_layer);
    rc = m->lw ? 0 : -1;
    int d = droppable(m);
    size_t done = 0, total = tensor_bytes(&m->output);
    for (int64_t i = 0; i < m->hp.n_layer; i++) {
      const ml_layer *L = &m->layers[i];
      const ml_tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wqkv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
      for (size_t j = 0; j < sizeof mats / sizeof mats[0]; j++) total += tensor_bytes(mats[j]);
    }
    for (int64_t i = 0; rc == 0 && i < m->hp.n_layer; i++) {
      const ml_layer *L = &m->layers[i];
      ml_layer_w *w = &m->lw[i];
      const ml_tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wqkv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
      ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wqkv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
      for (size_t j = 0; rc == 0 && j < sizeof mats / sizeof mats[0]; j++) {
        if (!mats[j]->storage) continue;
        if (prep(ws[j], mats[j], d) < 0) rc = -1;
        done += tensor_bytes(mats[j]);
        if (rc == 0 && progress && !progress(ud, done, total)) rc = -2;
      }
    }
    /* a tied output shares token_embd, whose rows the embedding lookup still reads */
    if (rc == 0 && m->output.storage) {
      if (prep(&m->output_w, &m->output, !m->tied_output && d) < 0) rc = -1;
      else if (progress && !progress(ud, total, total)) rc = -2;
    }
    preparing = NULL;
    m->prepare_seconds = seconds() - t0;
    if (rc == 0) {
      __atomic_store_n(&m->prepared, 1, __ATOMIC_RELEASE);
    } else if (m->lw) { /* undo, so a later call starts clean */
      for (int64_t i = 0; i < m->hp.n_layer; i++) release_layer_w(&m->lw[i]);
      ml_free(m->lw);
      m->lw = NULL;
      ml_weight_release(&m->output_w);
    }
    if (rc == -2) {
      ml_seterr("preparing the weights was cancelled");
      rc = -1;
    }
  }
  pthread_mutex_unlock(&m->prep_mu);
  return rc;
}

int ml_model_prepare(ml_model *m) { return ml_model_prepare_progress(m, NULL, NULL); }

static int same_view(const ml_tensor *a, const ml_tensor *b) {
  return a->storage && a->storage == b->storage && a->offset == b->offset && a->type == b->type && a->ndim == b->ndim &&
         !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) &&
         !memcmp(a->stride, b->stride, sizeof(int64_t) * (size_t)a->ndim);
}

const ml_weight *ml_model_weight_of(ml_model *m, const ml_tensor *t) {
  if (m->vocab_only || t->ndim != 2 || t->storage != m->storage || ml_model_prepare(m) < 0) return NULL;
  for (int64_t i = 0; i < m->hp.n_layer; i++) {
    const ml_layer *L = &m->layers[i];
    const ml_layer_w *w = &m->lw[i];
    const ml_tensor *mats[] = {&L->wq, &L->wk, &L->wv, &L->wqkv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
    const ml_weight *ws[] = {&w->wq, &w->wk, &w->wv, &w->wqkv, &w->wo, &w->w_gate, &w->w_up, &w->w_down};
    for (size_t j = 0; j < sizeof mats / sizeof mats[0]; j++)
      if (same_view(mats[j], t)) return ws[j];
  }
  if (m->output.storage && same_view(&m->output, t)) return &m->output_w;
  return NULL;
}
