/* registry.h: internal side of the process-wide registry (see model.h for the public side). */
#ifndef ML_REGISTRY_H
#define ML_REGISTRY_H

#include "model.h"

int ml_registry_add_context(ml_context *c); /* assigns c->handle */
struct ml_grammar;
int ml_registry_add_grammar(struct ml_grammar *g); /* assigns g->handle */
/* Called by the objects' free functions, before they are torn down. */
void ml_registry_forget(const void *obj);
/* Retain if the refcount is not already zero (an object being freed); 1 if retained. */
int ml_retain_live(int *refcount);

#endif
