/*
 * WasmCounter: a WASM controller in C, compiled by clang's wasm32 target (freestanding: no
 * libc, no WASI) into a core module against the canonical ABI of the magic:controller world
 * (wit/magic-controller.wit). The runtime componentizes it at deploy (docs/wasm.md).
 *
 * execute(input): reads a counter from the cache (cache:read), stores it plus one
 * (cache:write), emits a custom metric, logs a line, and returns {"hits": N, "input_bytes": M}.
 */
#include <stddef.h>
#include <stdint.h>

#define IMPORT(module, name) __attribute__((import_module(module), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

/* result<string, failure> as the canonical ABI lays it out: tag, then the payload at 4. */
typedef struct { const char *ptr; size_t len; } str_t;
typedef struct {
    uint8_t is_err;
    union {
        str_t ok;
        struct { str_t code; str_t message; } err;
    } val;
} call_result_t;

IMPORT("magic:controller/cache", "call")
void cache_call(const char *op, size_t op_len, const char *args, size_t args_len, call_result_t *ret);
IMPORT("magic:controller/log", "log")
void log_line(const char *level, size_t level_len, const char *msg, size_t msg_len,
              const char *fields, size_t fields_len);
IMPORT("magic:controller/metrics", "emit")
void metric_emit(const char *kind, size_t kind_len, const char *name, size_t name_len, double value,
                 const char *labels, size_t labels_len);

/* A bump allocator: an instance lives for one execution, so nothing is ever freed. */
extern unsigned char __heap_base;
static uintptr_t heap_top = 0;

EXPORT("cabi_realloc")
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    (void)old;
    (void)old_size;
    if (heap_top == 0) heap_top = (uintptr_t)&__heap_base;
    uintptr_t p = (heap_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = p + new_size;
    uintptr_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        if (__builtin_wasm_memory_grow(0, (end - have + 65535u) / 65536u) == (size_t)-1)
            __builtin_trap();
    }
    heap_top = end;
    return (void *)p;
}

static size_t cstrlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

/* Append the decimal digits of `n` at `out`; returns the new end. */
static char *put_u64(char *out, uint64_t n) {
    char tmp[20];
    int i = 0;
    do { tmp[i++] = (char)('0' + n % 10); n /= 10; } while (n);
    while (i) *out++ = tmp[--i];
    return out;
}

static char *put(char *out, const char *s) {
    while (*s) *out++ = *s++;
    return out;
}

static call_result_t ret_area;

EXPORT("execute")
call_result_t *execute(const char *input, size_t input_len) {
    (void)input;
    call_result_t r;
    static const char get_args[] = "{\"key\":\"wasmc:hits\"}";
    cache_call("get", 3, get_args, cstrlen(get_args), &r);
    if (r.is_err) {
        ret_area = r; /* pass the broker's failure (code + message) through */
        return &ret_area;
    }
    /* The value is JSON text: `null` when absent, else a number. */
    uint64_t hits = 0;
    for (size_t i = 0; i < r.val.ok.len; i++) {
        char c = r.val.ok.ptr[i];
        if (c >= '0' && c <= '9') hits = hits * 10 + (uint64_t)(c - '0');
    }
    hits += 1;

    char *set_args = cabi_realloc(0, 0, 1, 96);
    char *end = put(set_args, "{\"key\":\"wasmc:hits\",\"ttl_s\":60,\"value\":");
    end = put_u64(end, hits);
    end = put(end, "}");
    cache_call("set", 3, set_args, (size_t)(end - set_args), &r);
    if (r.is_err) {
        ret_area = r;
        return &ret_area;
    }

    metric_emit("counter", 7, "wasm_c_hits", 11, 1.0, "{}", 2);
    char *fields = cabi_realloc(0, 0, 1, 64);
    char *fend = put(fields, "{\"hits\":");
    fend = put_u64(fend, hits);
    fend = put(fend, "}");
    log_line("info", 4, "counted a visit", 15, fields, (size_t)(fend - fields));

    char *out = cabi_realloc(0, 0, 1, 96);
    char *oend = put(out, "{\"hits\":");
    oend = put_u64(oend, hits);
    oend = put(oend, ",\"input_bytes\":");
    oend = put_u64(oend, input_len);
    oend = put(oend, "}");
    ret_area.is_err = 0;
    ret_area.val.ok.ptr = out;
    ret_area.val.ok.len = (size_t)(oend - out);
    return &ret_area;
}
