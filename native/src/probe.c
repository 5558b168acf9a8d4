/*
 * A streaming-read probe: the memory bandwidth that n threads reach reading disjoint slices of one
 * buffer much larger than the caches, on the core's own thread pool. Decode reads every weight byte
 * once per token, so this is the ceiling its GB/s are compared with.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"
#include "ops_internal.h"
#include "threadpool.h"

typedef struct {
    const uint64_t *data;
    size_t n_words;
    uint64_t sink[64]; /* one per thread, 8 words apart, so the reads cannot be optimized away */
} probe_job;

static void read_slice(void *arg, int ith, int nth) {
    probe_job *job = arg;
    int64_t i0, i1;
    hl_split((int64_t)(job->n_words / 8), ith, nth, &i0, &i1);
    uint64_t acc[8] = {0};
    for (int64_t i = i0 * 8; i < i1 * 8; i += 8)
        for (int k = 0; k < 8; k++) acc[k] ^= job->data[i + k];
    job->sink[(ith % 8) * 8] = acc[0] ^ acc[1] ^ acc[2] ^ acc[3] ^ acc[4] ^ acc[5] ^ acc[6] ^ acc[7];
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

hl_status hl_read_bandwidth(size_t bytes, int32_t n_threads, int32_t repeats, double *gb_per_s) {
    if (bytes < 64 || n_threads < 1 || n_threads > 512 || repeats < 1 || repeats > 1000 || !gb_per_s)
        return hl_fail(HL_ERR_INVALID, "hl_read_bandwidth: bytes (%zu) >= 64, n_threads (%d) in 1..512, "
                       "repeats (%d) in 1..1000 and an output are needed", bytes, n_threads, repeats);
    probe_job job = {.n_words = bytes / sizeof(uint64_t)};
    uint64_t *data = malloc(job.n_words * sizeof(uint64_t));
    double *samples = malloc((size_t)repeats * sizeof(double));
    hl_pool *pool = hl_pool_create(n_threads);
    hl_status st = HL_OK;
    if (!data || !samples || !pool) {
        st = hl_fail(HL_ERR_NOMEM, "hl_read_bandwidth: cannot allocate %zu bytes and %d threads", bytes, n_threads);
    } else {
        memset(data, 1, job.n_words * sizeof(uint64_t)); /* fault every page in before timing */
        job.data = data;
        hl_pool_run(pool, read_slice, &job);
        for (int32_t r = 0; r < repeats; r++) {
            const double start = now_s();
            hl_pool_run(pool, read_slice, &job);
            samples[r] = (double)(job.n_words * sizeof(uint64_t)) / (now_s() - start) / 1e9;
        }
        qsort(samples, (size_t)repeats, sizeof(double), cmp_double);
        *gb_per_s = samples[repeats / 2];
    }
    if (pool) hl_pool_free(pool);
    free(samples);
    free(data);
    return st;
}
