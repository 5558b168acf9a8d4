/*
 * Tensor checks, as llama.cpp's ggml_validate_row_data: a float row holds no NaN or infinity; a quantized
 * row's blocks carry finite F16 scales (d, and the min m / dmin where the type has one). The quants
 * themselves are small integers and always valid.
 *
 * hl_first_bad_row is the scalar reference (one thread, any row stride, also used on activations and KV
 * cache rows by the non-finite node finder); hl_check_tensor splits the rows over threads.
 */
#include "check_tensors.h"

#include "quants.h"
#include "threadpool.h"

static int f32_bad(uint32_t bits) { return (bits & 0x7f800000u) == 0x7f800000u; }
static int f16_bad(uint16_t h) { return (h & 0x7c00u) == 0x7c00u; }
static int bf16_bad(uint16_t h) { return (h & 0x7f80u) == 0x7f80u; }

static int row_bad_f32(const uint8_t *row, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, row + 4 * i, 4);
        if (f32_bad(bits)) return 1;
    }
    return 0;
}

static int row_bad_16(const uint8_t *row, int64_t n, int (*bad)(uint16_t)) {
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, row + 2 * i, 2);
        if (bad(h)) return 1;
    }
    return 0;
}

/* Where a type's F16 block scales sit: byte offsets in a block of type_size bytes (-1: none). */
typedef struct {
    int32_t type;
    int d_offset, m_offset;
} scale_layout;

static const scale_layout SCALES[] = {
    {HL_TYPE_Q4_0, offsetof(block_q4_0, d), -1},
    {HL_TYPE_Q4_1, offsetof(block_q4_1, d), offsetof(block_q4_1, m)},
    {HL_TYPE_Q5_0, offsetof(block_q5_0, d), -1},
    {HL_TYPE_Q5_1, offsetof(block_q5_1, d), offsetof(block_q5_1, m)},
    {HL_TYPE_Q8_0, offsetof(block_q8_0, d), -1},
    {HL_TYPE_Q2_K, offsetof(block_q2_K, d), offsetof(block_q2_K, dmin)},
    {HL_TYPE_Q3_K, offsetof(block_q3_K, d), -1},
    {HL_TYPE_Q4_K, offsetof(block_q4_K, d), offsetof(block_q4_K, dmin)},
    {HL_TYPE_Q5_K, offsetof(block_q5_K, d), offsetof(block_q5_K, dmin)},
    {HL_TYPE_Q6_K, offsetof(block_q6_K, d), -1},
};

static const scale_layout *scale_layout_of(int32_t type) {
    for (size_t i = 0; i < sizeof SCALES / sizeof *SCALES; i++)
        if (SCALES[i].type == type) return &SCALES[i];
    return NULL;
}

static int row_bad_blocks(const uint8_t *row, int64_t n_blocks, size_t type_size, const scale_layout *s) {
    for (int64_t b = 0; b < n_blocks; b++) {
        const uint8_t *block = row + (size_t)b * type_size;
        uint16_t d, m = 0;
        memcpy(&d, block + s->d_offset, 2);
        if (s->m_offset >= 0) memcpy(&m, block + s->m_offset, 2);
        if (f16_bad(d) || f16_bad(m)) return 1;
    }
    return 0;
}

int hl_check_supported(int32_t type) {
    return type == HL_TYPE_F32 || type == HL_TYPE_F16 || type == HL_TYPE_BF16 || scale_layout_of(type) != NULL;
}

int64_t hl_first_bad_row(int32_t type, const void *data, size_t row_stride, int64_t n_cols, int64_t n_rows) {
    const hl_type_traits *t = hl_get_type_traits(type);
    const scale_layout *s = scale_layout_of(type);
    for (int64_t r = 0; r < n_rows; r++) {
        const uint8_t *row = (const uint8_t *)data + (size_t)r * row_stride;
        int bad = type == HL_TYPE_F32    ? row_bad_f32(row, n_cols)
                  : type == HL_TYPE_F16  ? row_bad_16(row, n_cols, f16_bad)
                  : type == HL_TYPE_BF16 ? row_bad_16(row, n_cols, bf16_bad)
                                         : row_bad_blocks(row, n_cols / t->block_size, t->type_size, s);
        if (bad) return r;
    }
    return -1;
}

typedef struct {
    int32_t type;
    const uint8_t *data;
    size_t row_bytes;
    int64_t n_cols, n_rows;
    int64_t first_bad[512]; /* per thread: first bad row of its slice, or -1 */
} check_job;

static void check_slice(void *arg, int ith, int nth) {
    check_job *job = arg;
    const int64_t per = (job->n_rows + nth - 1) / nth;
    const int64_t r0 = per * ith, r1 = r0 + per < job->n_rows ? r0 + per : job->n_rows;
    job->first_bad[ith] = -1;
    if (r0 >= r1) return;
    const int64_t bad = hl_first_bad_row(job->type, job->data + (size_t)r0 * job->row_bytes, job->row_bytes,
                                         job->n_cols, r1 - r0);
    if (bad >= 0) job->first_bad[ith] = r0 + bad;
}

hl_status hl_check_tensor(int32_t type, const void *data, int64_t n_cols, int64_t n_rows, int32_t n_threads,
                          int64_t *bad_row) {
    hl_quants_init();
    if (!bad_row || (!data && n_rows > 0)) return hl_fail(HL_ERR_INVALID, "hl_check_tensor: NULL argument");
    if (!hl_check_supported(type))
        return hl_fail(HL_ERR_UNSUPPORTED, "hl_check_tensor: type %d cannot be checked", (int)type);
    if (n_cols < 0 || n_rows < 0 || (n_cols > 0 && hl_row_size(type, n_cols) == 0))
        return hl_fail(HL_ERR_INVALID, "hl_check_tensor: %lld x %lld is not a whole number of blocks",
                       (long long)n_rows, (long long)n_cols);
    if (n_threads < 1 || n_threads > 512)
        return hl_fail(HL_ERR_INVALID, "hl_check_tensor: n_threads %d is not 1 to 512", (int)n_threads);
    check_job job = {type, data, hl_row_size(type, n_cols), n_cols, n_rows, {0}};
    if (n_threads > n_rows) n_threads = n_rows > 0 ? (int32_t)n_rows : 1;
    hl_pool *pool = hl_pool_create(n_threads);
    if (!pool) return hl_fail(HL_ERR_NOMEM, "hl_check_tensor: could not start %d threads", (int)n_threads);
    hl_pool_run(pool, check_slice, &job);
    hl_pool_free(pool);
    *bad_row = -1;
    for (int i = 0; i < n_threads && *bad_row < 0; i++) *bad_row = job.first_bad[i];
    return HL_OK;
}
