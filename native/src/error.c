/* The per-thread last-error message behind hl_last_error(). */
#include <stdarg.h>
#include <stdio.h>

#include "common.h"

static _Thread_local char last_error[512];

hl_status hl_fail(hl_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, args);
    va_end(args);
    return status;
}

const char *hl_last_error(void) { return last_error; }
