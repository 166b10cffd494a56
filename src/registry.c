/* registry.c: every live model and context of the process, by integer handle, behind one
 * mutex. Entries are weak: lookups retain only objects whose refcount is not yet zero, and
 * an object removes itself on its way out, so the registry never keeps anything alive. */
#include "registry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "context.h"
#include "grammar_int.h"

typedef struct entry {
  int64_t handle;
  int kind; /* 1 model, 2 context, 3 grammar */
  void *obj;
} entry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static entry *entries;
static size_t n_entries, cap_entries;
static int64_t next_handle = 1;

int ml_retain_live(int *refcount) {
  int n = __atomic_load_n(refcount, __ATOMIC_RELAXED);
  while (n > 0)
    if (__atomic_compare_exchange_n(refcount, &n, n + 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return 1;
  return 0;
}

static int64_t add(int kind, void *obj) {
  if (n_entries == cap_entries) {
    size_t nc = cap_entries ? cap_entries * 2 : 16;
    entry *ne = realloc(entries, nc * sizeof *ne);
    if (!ne) {
      ml_seterr("out of memory (registry)");
      return -1;
    }
    entries = ne;
    cap_entries = nc;
  }
  entries[n_entries].handle = next_handle;
  entries[n_entries].kind = kind;
  entries[n_entries].obj = obj;
  n_entries++;
  return next_handle++;
}

void ml_registry_forget(const void *obj) {
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_entries; i++)
    if (entries[i].obj == obj) {
      entries[i] = entries[--n_entries];
      break;
    }
  pthread_mutex_unlock(&mu);
}

static int64_t mtime_ns(const struct stat *st) {
  return (int64_t)st->st_mtim.tv_sec * 1000000000 + (int64_t)st->st_mtim.tv_nsec;
}

ml_model *ml_registry_load(const char *path, const ml_model_opts *opts) {
  struct stat st;
  int vocab_only = opts && opts->vocab_only;
  int have_id = stat(path, &st) == 0;
  if (have_id) {
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < n_entries; i++) {
      ml_model *m = entries[i].obj;
      if (entries[i].kind == 1 && m->dev == (uint64_t)st.st_dev && m->ino == (uint64_t)st.st_ino &&
          m->size == (uint64_t)st.st_size && m->mtime_ns == mtime_ns(&st) && m->vocab_only == vocab_only &&
          ml_retain_live(&m->refcount)) {
        pthread_mutex_unlock(&mu);
        return m;
      }
    }
    pthread_mutex_unlock(&mu);
  }
  /* load outside the lock; two threads loading one file at once may both load it, which is
   * harmless (the second is simply not shared) */
  ml_model *m = ml_model_load(path, opts);
  if (!m) return NULL;
  if (have_id) {
    m->dev = (uint64_t)st.st_dev;
    m->ino = (uint64_t)st.st_ino;
    m->size = (uint64_t)st.st_size;
    m->mtime_ns = mtime_ns(&st);
  }
  pthread_mutex_lock(&mu);
  int64_t h = add(1, m);
  pthread_mutex_unlock(&mu);
  if (h < 0) {
    ml_model_release(m);
    return NULL;
  }
  m->handle = h;
  return m;
}

int ml_registry_add_context(ml_context *c) {
  pthread_mutex_lock(&mu);
  int64_t h = add(2, c);
  pthread_mutex_unlock(&mu);
  if (h < 0) return -1;
  c->handle = h;
  return 0;
}

int ml_registry_add_grammar(ml_grammar *g) {
  pthread_mutex_lock(&mu);
  int64_t h = add(3, g);
  pthread_mutex_unlock(&mu);
  if (h < 0) return -1;
  g->handle = h;
  return 0;
}

static int *refcount_of(const entry *e) {
  switch (e->kind) {
  case 1: return &((ml_model *)e->obj)->refcount;
  case 2: return &((ml_context *)e->obj)->refcount;
  default: return &((ml_grammar *)e->obj)->refcount;
  }
}

static void *lookup(int64_t handle, int kind) {
  void *found = NULL;
  pthread_mutex_lock(&mu);
  for (size_t i = 0; i < n_entries; i++)
    if (entries[i].handle == handle && entries[i].kind == kind) {
      if (ml_retain_live(refcount_of(&entries[i]))) found = entries[i].obj;
      break;
    }
  pthread_mutex_unlock(&mu);
  return found;
}

ml_model *ml_registry_model(int64_t handle) { return lookup(handle, 1); }
ml_context *ml_registry_context(int64_t handle) { return lookup(handle, 2); }
ml_grammar *ml_registry_grammar(int64_t handle) { return lookup(handle, 3); }
int64_t ml_model_handle(const ml_model *m) { return m->handle; }
int64_t ml_context_handle(const ml_context *c) { return c->handle; }
