/* Persistent worker threads, a start signal per job, and a spinning barrier. */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

struct hl_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mutex;
    pthread_cond_t start;
    int generation; /* bumped (under mutex) to start a job */
    int stop;
    hl_job_fn job;
    void *arg;
    atomic_int n_running;  /* workers still inside the current job */
    atomic_int n_arrived;  /* barrier: threads arrived in this phase */
    atomic_int barrier_phase;
};

typedef struct {
    hl_pool *pool;
    int ith;
} worker_arg;

static void wait_until_equal(atomic_int *value, int expected) {
    for (int spins = 0; atomic_load_explicit(value, memory_order_acquire) != expected; spins++) {
        if (spins < 2000) CPU_RELAX();
        else sched_yield();
    }
}

void hl_pool_barrier(hl_pool *pool) {
    int n = pool->n_threads;
    if (n == 1) return;
    int phase = atomic_load_explicit(&pool->barrier_phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->n_arrived, 1, memory_order_acq_rel) == n - 1) {
        atomic_store_explicit(&pool->n_arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->barrier_phase, 1, memory_order_acq_rel);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&pool->barrier_phase, memory_order_acquire) == phase; spins++) {
        if (spins < 2000) CPU_RELAX();
        else sched_yield();
    }
}

static void *worker_main(void *p) {
    worker_arg *wa = p;
    hl_pool *pool = wa->pool;
    int seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool->mutex);
        while (pool->generation == seen && !pool->stop) pthread_cond_wait(&pool->start, &pool->mutex);
        int stop = pool->stop;
        seen = pool->generation;
        hl_job_fn job = pool->job;
        void *arg = pool->arg;
        pthread_mutex_unlock(&pool->mutex);
        if (stop) break;
        job(arg, wa->ith, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->n_running, 1, memory_order_acq_rel);
    }
    free(wa);
    return NULL;
}

hl_pool *hl_pool_create(int n_threads) {
    if (n_threads < 1) return NULL;
    hl_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n_threads = n_threads;
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) { free(pool); return NULL; }
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->start, NULL);
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){pool, i};
        if (!wa || pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->n_threads = i; /* free only the threads that started */
            hl_pool_free(pool);
            return NULL;
        }
    }
    return pool;
}

void hl_pool_free(hl_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mutex);
    pool->stop = 1;
    pthread_cond_broadcast(&pool->start);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->start);
    free(pool->threads);
    free(pool);
}

int hl_pool_size(const hl_pool *pool) { return pool->n_threads; }

void hl_pool_run(hl_pool *pool, hl_job_fn job, void *arg) {
    if (pool->n_threads > 1) {
        atomic_store(&pool->n_running, pool->n_threads - 1);
        pthread_mutex_lock(&pool->mutex);
        pool->job = job;
        pool->arg = arg;
        pool->generation++;
        pthread_cond_broadcast(&pool->start);
        pthread_mutex_unlock(&pool->mutex);
    }
    job(arg, 0, pool->n_threads);
    wait_until_equal(&pool->n_running, 0);
}
