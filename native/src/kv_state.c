/*
 * A sequence's KV cells as bytes, for prompt-cache files: hl_sequence_state_read copies the cells in use out,
 * hl_sequence_state_write replaces the sequence's cells with cells read back. Layout, per layer in order:
 *
 *   K [n_cells][n_embd_kv]   (rows per cell, as cached)
 *   V [n_embd_kv][n_cells]   (transposed, as cached, rows cut to n_cells)
 *
 * in the context's cache type. Cells written back are marked as computed under the sequence's active adapter
 * set: the caller has checked that the file was made under the same model and adapter set.
 */
#include "core.h"

size_t hl_sequence_state_size(const hl_sequence *s, int32_t n_cells) {
    if (!s || n_cells < 0 || n_cells > s->n_ctx) return 0;
    const hl_context *c = s->ctx;
    const size_t cells = hl_row_size(c->params.cache_type, c->model->n_embd_kv) * (size_t)n_cells;
    return 2 * (size_t)c->model->hp.n_layer * cells;
}

/* Copies n_cells cells between the cache of s and buf (to_cache: buf -> cache). */
static void copy_cells(const hl_sequence *s, char *buf, int32_t n_cells, int to_cache) {
    const hl_context *c = s->ctx;
    const size_t es = c->params.cache_type == HL_TYPE_F32 ? 4 : 2;
    const size_t n_kv = (size_t)c->model->n_embd_kv, n_ctx = (size_t)s->n_ctx, n = (size_t)n_cells;
    for (int il = 0; il < c->model->hp.n_layer; il++) {
        char *k = s->k_cache[il], *v = s->v_cache[il];
        if (to_cache) memcpy(k, buf, n * n_kv * es);
        else memcpy(buf, k, n * n_kv * es);
        buf += n * n_kv * es;
        for (size_t i = 0; i < n_kv; i++, buf += n * es) {
            if (to_cache) memcpy(v + i * n_ctx * es, buf, n * es);
            else memcpy(buf, v + i * n_ctx * es, n * es);
        }
    }
}

hl_status hl_sequence_state_read(const hl_sequence *s, void *buf, size_t cap) {
    if (!s || !buf) return hl_fail(HL_ERR_INVALID, "hl_sequence_state_read: NULL argument");
    const size_t need = hl_sequence_state_size(s, s->n_used);
    if (cap < need)
        return hl_fail(HL_ERR_INVALID, "hl_sequence_state_read: %zu bytes given, %d cells need %zu", cap, s->n_used,
                       need);
    copy_cells(s, buf, s->n_used, 0);
    return HL_OK;
}

hl_status hl_sequence_state_write(hl_sequence *s, const void *buf, size_t size, int32_t n_cells) {
    if (!s || !buf) return hl_fail(HL_ERR_INVALID, "hl_sequence_state_write: NULL argument");
    if (n_cells < 0 || n_cells > s->n_ctx)
        return hl_fail(HL_ERR_INVALID, "hl_sequence_state_write: %d cells do not fit in %d", n_cells, s->n_ctx);
    const size_t need = hl_sequence_state_size(s, n_cells);
    if (size != need)
        return hl_fail(HL_ERR_INVALID, "hl_sequence_state_write: %zu bytes given, %d cells need %zu", size, n_cells,
                       need);
    copy_cells(s, (char *)buf, n_cells, 1);
    for (int32_t i = 0; i < n_cells; i++) s->cell_sig[i] = s->set_sig;
    s->n_used = n_cells;
    return HL_OK;
}
