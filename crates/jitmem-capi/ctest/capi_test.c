/* The C API end to end, and every bad input of the issue: each answered with an error and a
 * message, no crash, nothing leaked, other live code unaffected. */
#include "jitmem.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int checks = 0;

#define CHECK(cond)                                                                        \
	do {                                                                                   \
		checks++;                                                                          \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__, __LINE__, \
			        #cond, jitmem_last_error());                                            \
			exit(1);                                                                       \
		}                                                                                  \
	} while (0)

/* A call that must fail with `status` and leave a message. */
#define EXPECT_ERROR(call, status)                                                         \
	do {                                                                                   \
		jitmem_status s_ = (call);                                                         \
		CHECK(s_ == (status));                                                             \
		CHECK(strlen(jitmem_last_error()) > 0);                                            \
	} while (0)

#define OK(call) CHECK((call) == JITMEM_STATUS_OK)

typedef uint32_t (*fn_u32)(void);

/* A function returning `value` (x86-64: mov eax, imm32; ret / AArch64: movz+movk w0; ret). */
static size_t make_function(uint8_t *dst, uint32_t value) {
#if defined(__x86_64__)
	dst[0] = 0xB8;
	memcpy(dst + 1, &value, 4);
	dst[5] = 0xC3;
	return 6;
#elif defined(__aarch64__)
	uint32_t insns[3] = {0x52800000u | ((value & 0xFFFFu) << 5),
	                     0x72A00000u | ((value >> 16) << 5), 0xD65F03C0u};
	memcpy(dst, insns, sizeof insns);
	return sizeof insns;
#else
#error "jitmem supports x86-64 and AArch64"
#endif
}

static void *new_function(jitmem_memory *m, uint32_t value) {
	void *code = NULL, *rw = NULL;
	OK(jitmem_alloc(m, 64, 0, &code));
	OK(jitmem_write_begin(m, code, 64, &rw));
	make_function((uint8_t *)rw, value);
	OK(jitmem_write_end(m, code, 0));
	return code;
}

static uint32_t call(void *code) {
	fn_u32 f;
	memcpy(&f, &code, sizeof f);
	return f();
}

static void life_of_a_function(uint32_t strategy, uint32_t layout) {
	jitmem_config config = {strategy, layout, 16u << 20, 0, 0};
	jitmem_memory *m = NULL;
	jitmem_status s = jitmem_memory_new(&config, &m);
	if (s == JITMEM_STATUS_UNSUPPORTED) {
		printf("strategy %u unsupported here: %s\n", strategy, jitmem_last_error());
		return;
	}
	OK(s);
	void *code = new_function(m, 7);
	CHECK(call(code) == 7);
	/* Patch 4 bytes of live code, nested inside an outer scope. */
	void *outer = NULL, *inner = NULL;
	OK(jitmem_write_begin(m, code, 64, &outer));
	uint8_t tmp[16];
	size_t n = make_function(tmp, 9);
	OK(jitmem_write_begin(m, code, n, &inner));
	memcpy(inner, tmp, n);
	OK(jitmem_write_end(m, code, 1));
	OK(jitmem_write_end(m, code, 0));
	CHECK(call(code) == 9);
	OK(jitmem_shrink(m, code, 16));
	CHECK(call(code) == 9);
	jitmem_stats st;
	OK(jitmem_memory_stats(m, &st));
	CHECK(st.live_blocks == 1);
	OK(jitmem_free(m, code));
	OK(jitmem_memory_stats(m, &st));
	CHECK(st.live_blocks == 0 && st.live_bytes == 0);
	OK(jitmem_memory_free(m));
}

static void bad_input(void) {
	jitmem_memory *m = NULL;
	void *code = NULL, *rw = NULL;
	jitmem_config bad_strategy = {99, 0, 0, 0, 0};
	EXPECT_ERROR(jitmem_memory_new(&bad_strategy, &m), JITMEM_STATUS_INVALID_ARGUMENT);
	jitmem_config bad_layout = {0, 7, 0, 0, 0};
	EXPECT_ERROR(jitmem_memory_new(&bad_layout, &m), JITMEM_STATUS_INVALID_ARGUMENT);
	jitmem_config rwx = {JITMEM_STRATEGY_RWX, 0, 0, 0, 0};
	EXPECT_ERROR(jitmem_memory_new(&rwx, &m), JITMEM_STATUS_UNSUPPORTED);
	EXPECT_ERROR(jitmem_memory_new(NULL, NULL), JITMEM_STATUS_INVALID_ARGUMENT);

	jitmem_config arena = {JITMEM_STRATEGY_MIRROR, JITMEM_LAYOUT_ARENA, 64u << 10, 0, 0};
	OK(jitmem_memory_new(&arena, &m));
	void *live = new_function(m, 123);

	EXPECT_ERROR(jitmem_alloc(NULL, 16, 0, &code), JITMEM_STATUS_INVALID_ARGUMENT);
	EXPECT_ERROR(jitmem_alloc(m, 16, 0, NULL), JITMEM_STATUS_INVALID_ARGUMENT);
	EXPECT_ERROR(jitmem_alloc(m, 0, 0, &code), JITMEM_STATUS_ZERO_LENGTH);
	EXPECT_ERROR(jitmem_alloc(m, SIZE_MAX, 0, &code), JITMEM_STATUS_TOO_LARGE);
	EXPECT_ERROR(jitmem_alloc(m, SIZE_MAX - 15, 0, &code), JITMEM_STATUS_TOO_LARGE);
	EXPECT_ERROR(jitmem_alloc(m, 16, 3, &code), JITMEM_STATUS_BAD_ALIGNMENT);
	EXPECT_ERROR(jitmem_alloc(m, 16, 1u << 20, &code), JITMEM_STATUS_BAD_ALIGNMENT);
	EXPECT_ERROR(jitmem_alloc(m, 1u << 20, 0, &code), JITMEM_STATUS_EXHAUSTED);

	int on_stack = 0;
	void *heap = malloc(64);
	EXPECT_ERROR(jitmem_free(m, NULL), JITMEM_STATUS_UNKNOWN_POINTER);
	EXPECT_ERROR(jitmem_free(m, &on_stack), JITMEM_STATUS_UNKNOWN_POINTER);
	EXPECT_ERROR(jitmem_free(m, heap), JITMEM_STATUS_UNKNOWN_POINTER);
	EXPECT_ERROR(jitmem_free(m, (uint8_t *)live + 1), JITMEM_STATUS_UNKNOWN_POINTER);
	free(heap);

	void *doomed = new_function(m, 5);
	OK(jitmem_free(m, doomed));
	EXPECT_ERROR(jitmem_free(m, doomed), JITMEM_STATUS_UNKNOWN_POINTER); /* double free */

	EXPECT_ERROR(jitmem_write_end(m, live, 0), JITMEM_STATUS_UNBALANCED);
	EXPECT_ERROR(jitmem_write_begin(m, live, 1u << 20, &rw), JITMEM_STATUS_INVALID_ARGUMENT);
	EXPECT_ERROR(jitmem_write_begin(m, &on_stack, 4, &rw), JITMEM_STATUS_UNKNOWN_POINTER);
	OK(jitmem_write_begin(m, live, 4, &rw));
	EXPECT_ERROR(jitmem_free(m, live), JITMEM_STATUS_UNBALANCED); /* scope still open */
	OK(jitmem_write_end(m, live, 0));
	EXPECT_ERROR(jitmem_shrink(m, live, 0), JITMEM_STATUS_INVALID_ARGUMENT);

	/* The panic guard: a Rust panic becomes an error. */
	EXPECT_ERROR(jitmem_check_panic_guard(), JITMEM_STATUS_INTERNAL);
	CHECK(strstr(jitmem_last_error(), "panic") != NULL);

	/* Live code ran through all of it; nothing leaked. */
	CHECK(call(live) == 123);
	jitmem_stats st;
	OK(jitmem_memory_stats(m, &st));
	CHECK(st.live_blocks == 1);
	OK(jitmem_free(m, live));
	OK(jitmem_memory_stats(m, &st));
	CHECK(st.live_blocks == 0);
	OK(jitmem_memory_free(m));
	OK(jitmem_memory_free(NULL));
}

static void codegen_bad_input(void) {
	/* Allocation before SetJitType / AllocateExecutableMemoryRegion works (the seed returned
	 * NULL silently): LuckTXM, the seed's default, is set up on first use. */
	void *p = jitmem_codegen_allocate(4096);
	CHECK(p != NULL);
	/* Changing the mode while allocations are live is refused. */
	EXPECT_ERROR(jitmem_codegen_set_jit_type(JITMEM_JIT_TYPE_LEGACY), JITMEM_STATUS_WRONG_STATE);
	EXPECT_ERROR(jitmem_codegen_set_jit_type(42), JITMEM_STATUS_INVALID_ARGUMENT);
	/* A size beyond the arena. */
	CHECK(jitmem_codegen_allocate((size_t)1 << 30) == NULL);
	CHECK(strstr(jitmem_last_error(), "arena") != NULL);
	CHECK(jitmem_codegen_allocate(0) == NULL);
	/* Sized frees must repeat the size; NULL, foreign and double frees are refused. */
	EXPECT_ERROR(jitmem_codegen_free(p, 100), JITMEM_STATUS_SIZE_MISMATCH);
	EXPECT_ERROR(jitmem_codegen_free(NULL, 4096), JITMEM_STATUS_INVALID_ARGUMENT);
	int x;
	EXPECT_ERROR(jitmem_codegen_free(&x, 4096), JITMEM_STATUS_UNKNOWN_POINTER);
	CHECK(jitmem_codegen_writable_diff(&x, 4) == JITMEM_DIFF_ERROR);
	CHECK(jitmem_codegen_writable_diff(p, 1u << 20) == JITMEM_DIFF_ERROR);
	ptrdiff_t diff = jitmem_codegen_writable_diff(p, 4096);
	CHECK(diff != JITMEM_DIFF_ERROR && diff != 0);
	EXPECT_ERROR(jitmem_codegen_free_writable_region(p, 4096, diff + 1), JITMEM_STATUS_INVALID_ARGUMENT);
	OK(jitmem_codegen_free_writable_region(p, 4096, diff));
	/* The flush checks its range like every other call. */
	OK(jitmem_codegen_flush_instruction_cache(p, 4096));
	EXPECT_ERROR(jitmem_codegen_flush_instruction_cache(p, 4097), JITMEM_STATUS_SIZE_MISMATCH);
	EXPECT_ERROR(jitmem_codegen_flush_instruction_cache(&x, 4), JITMEM_STATUS_UNKNOWN_POINTER);
	EXPECT_ERROR(jitmem_codegen_flush_instruction_cache(NULL, 4), JITMEM_STATUS_INVALID_ARGUMENT);
	OK(jitmem_codegen_free(p, 4096));
	EXPECT_ERROR(jitmem_codegen_flush_instruction_cache(p, 4), JITMEM_STATUS_UNKNOWN_POINTER);
	EXPECT_ERROR(jitmem_codegen_free(p, 4096), JITMEM_STATUS_UNKNOWN_POINTER);

	/* Legacy: unbalanced toggles are errors; balanced ones nest. */
	OK(jitmem_codegen_set_jit_type(JITMEM_JIT_TYPE_LEGACY));
	void *q = jitmem_codegen_allocate(100);
	CHECK(q != NULL);
	CHECK(jitmem_codegen_writable_diff(q, 100) == 0);
	EXPECT_ERROR(jitmem_codegen_write_disable(q), JITMEM_STATUS_UNBALANCED);
	OK(jitmem_codegen_write_enable(q));
	OK(jitmem_codegen_write_enable((uint8_t *)q + 10));
	make_function((uint8_t *)q, 77);
	OK(jitmem_codegen_write_disable(q));
	OK(jitmem_codegen_write_disable(q));
	EXPECT_ERROR(jitmem_codegen_write_disable(q), JITMEM_STATUS_UNBALANCED);
	CHECK(call(q) == 77);
	EXPECT_ERROR(jitmem_codegen_write_enable(&x), JITMEM_STATUS_UNKNOWN_POINTER);
	OK(jitmem_codegen_free(q, 100));
	OK(jitmem_codegen_set_jit_type(JITMEM_JIT_TYPE_LUCK_NO_TXM));
}

/* Several threads at once, through one memory and through the CodeGen API. */
static jitmem_memory *shared_memory;

static void *worker(void *arg) {
	uint32_t base = (uint32_t)(uintptr_t)arg * 100000u;
	for (uint32_t i = 0; i < 2000; i++) {
		void *code = new_function(shared_memory, base + i);
		if (call(code) != base + i) return (void *)1;
		if (jitmem_free(shared_memory, code) != JITMEM_STATUS_OK) return (void *)2;
		void *p = jitmem_codegen_allocate(64);
		if (p == NULL || jitmem_codegen_free(p, 64) != JITMEM_STATUS_OK) return (void *)3;
	}
	return NULL;
}

static void threads(void) {
	OK(jitmem_memory_new(NULL, &shared_memory));
	pthread_t t[4];
	for (uintptr_t i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
	for (int i = 0; i < 4; i++) {
		void *r = NULL;
		CHECK(pthread_join(t[i], &r) == 0);
		CHECK(r == NULL);
	}
	jitmem_stats st;
	OK(jitmem_memory_stats(shared_memory, &st));
	CHECK(st.live_blocks == 0);
	OK(jitmem_memory_free(shared_memory));
}

/* jitmem_alloc with align 0 uses the memory's default_align, as jitmem.h promises (it used
 * 16: 60 of 64 blocks were not 256-aligned). */
static void default_align_is_used(void) {
	for (uint32_t l = JITMEM_LAYOUT_POOLED; l <= JITMEM_LAYOUT_ARENA; l++) {
		jitmem_config config = {JITMEM_STRATEGY_AUTO, l, 16u << 20, 256, 0};
		jitmem_memory *m = NULL;
		OK(jitmem_memory_new(&config, &m));
		void *code[64];
		int misaligned = 0;
		for (size_t i = 0; i < 64; i++) {
			OK(jitmem_alloc(m, 16 + 8 * (i % 5), 0, &code[i]));
			if ((uintptr_t)code[i] % 256 != 0) misaligned++;
		}
		if (misaligned != 0)
			fprintf(stderr, "layout %u: %d of 64 blocks not 256-aligned\n", l, misaligned);
		CHECK(misaligned == 0);
		/* An explicit alignment still wins. */
		void *small = NULL;
		OK(jitmem_alloc(m, 16, 16, &small));
		OK(jitmem_free(m, small));
		for (size_t i = 0; i < 64; i++) OK(jitmem_free(m, code[i]));
		OK(jitmem_memory_free(m));
	}
}

/* jitmem_memory_free with a write scope open is refused, as jitmem_free is (it dropped the
 * block, and under PerThread this thread kept write rights forever); the memory stays usable
 * and is freed once the scope ends. */
static void memory_free_with_open_scope(void) {
	for (uint32_t s = JITMEM_STRATEGY_TOGGLE; s <= JITMEM_STRATEGY_PER_THREAD; s++) {
		jitmem_config config = {s, JITMEM_LAYOUT_POOLED, 0, 0, 0};
		jitmem_memory *m = NULL;
		jitmem_status st = jitmem_memory_new(&config, &m);
		if (st == JITMEM_STATUS_UNSUPPORTED) {
			printf("strategy %u unsupported here: %s\n", s, jitmem_last_error());
			continue;
		}
		OK(st);
		void *code = new_function(m, 11);
		void *rw = NULL;
		OK(jitmem_write_begin(m, code, 16, &rw));
		EXPECT_ERROR(jitmem_memory_free(m), JITMEM_STATUS_UNBALANCED);
		CHECK(strstr(jitmem_last_error(), "scope") != NULL);
		/* Still usable: the open scope, the block, and new blocks. */
		make_function((uint8_t *)rw, 12);
		OK(jitmem_write_end(m, code, 0));
		CHECK(call(code) == 12);
		void *other = new_function(m, 13);
		CHECK(call(other) == 13);
		jitmem_stats stats;
		OK(jitmem_memory_stats(m, &stats));
		CHECK(stats.live_blocks == 2);
		OK(jitmem_memory_free(m));
	}
}

/* jitmem_last_error_copy: snprintf-like, and it leaves the message alone. */
static void last_error_copy(void) {
	EXPECT_ERROR(jitmem_codegen_set_jit_type(42), JITMEM_STATUS_INVALID_ARGUMENT);
	const char *live = jitmem_last_error();
	size_t need = jitmem_last_error_copy(NULL, 0);
	CHECK(need == strlen(live) && need > 0);
	char whole[256];
	CHECK(need < sizeof whole);
	CHECK(jitmem_last_error_copy(whole, sizeof whole) == need);
	CHECK(strcmp(whole, live) == 0);
	char small[5];
	CHECK(jitmem_last_error_copy(small, sizeof small) == need);
	CHECK(strlen(small) == 4 && strncmp(small, live, 4) == 0);
	/* The copy outlives the message, which the next call replaces. */
	OK(jitmem_codegen_allocate_region());
	CHECK(jitmem_last_error()[0] == '\0');
	CHECK(jitmem_last_error_copy(small, sizeof small) == 0 && small[0] == '\0');
	CHECK(strstr(whole, "unknown JitType 42") != NULL);
}

int main(void) {
	for (uint32_t s = JITMEM_STRATEGY_AUTO; s <= JITMEM_STRATEGY_PER_THREAD; s++)
		for (uint32_t l = JITMEM_LAYOUT_POOLED; l <= JITMEM_LAYOUT_ARENA; l++) life_of_a_function(s, l);
	bad_input();
	default_align_is_used();
	memory_free_with_open_scope();
	codegen_bad_input();
	last_error_copy();
	threads();
	size_t len = 0;
	OK(jitmem_probe_report(NULL, 0, &len));
	CHECK(len > 100);
	char small[8];
	OK(jitmem_probe_report(small, sizeof small, NULL));
	CHECK(strlen(small) == 7);
	printf("%d checks passed, 0 failed\n", checks);
	return 0;
}
