/*
 * A persistent thread pool. hl_pool_run() runs job(arg, ith, nth) on every
 * thread (the caller is thread 0) and returns when all have finished. Inside a
 * job, hl_pool_barrier() waits until every thread reaches it. Idle workers
 * sleep on a condition variable; barriers spin briefly, then yield.
 */
#ifndef HL_THREADPOOL_H
#define HL_THREADPOOL_H

typedef struct hl_pool hl_pool;
typedef void (*hl_job_fn)(void *arg, int ith, int nth);

/* NULL if threads or memory could not be had. */
hl_pool *hl_pool_create(int n_threads);
void hl_pool_free(hl_pool *pool);
int hl_pool_size(const hl_pool *pool);
void hl_pool_run(hl_pool *pool, hl_job_fn job, void *arg);
void hl_pool_barrier(hl_pool *pool);

#endif
