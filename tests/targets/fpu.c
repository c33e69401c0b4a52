/*
 * fpu: a busy loop whose state lives in FPU/SSE/AVX registers.
 *
 * Each iteration adds exact constants to: a ymm of doubles, a ymm of 64-bit
 * integers, a zmm of doubles (when AVX-512F is there), an x87 long double
 * and a scalar SSE double.  Every value is exactly representable, so after
 * N iterations the expected result is known exactly.  The rounding mode is
 * set to round-toward-zero (MXCSR and x87 control word) and must survive.
 * If a restore loses or corrupts registers, xstate (upper ymm/zmm halves,
 * x87 stack) or the control registers, the check fails.
 *
 * SIGUSR2: check now, print "check ok N" (or FAIL and exit 1), keep going.
 * SIGTERM: check, print PASS/FAIL, exit.
 */
#include "tgt.h"

#include <fenv.h>
#include <immintrin.h>
#include <stdint.h>

#define CHUNK (1 << 20)

static volatile sig_atomic_t check_req;

static void on_usr2(int sig)
{
	(void)sig;
	check_req = 1;
}

static struct {
	double a[4];		/* ymm, += {0.25, 0.5, 1, 2} */
	int64_t c[4];		/* ymm, += 3 */
	double z[8];		/* zmm, += k/8 */
	long double x;		/* x87, += 1 */
	double s;		/* xmm scalar, += 0.125 */
	uint64_t n;		/* iterations done */
} st;

static int have_avx2, have_avx512;
static unsigned int mxcsr0;
static unsigned short fcw0;
static double tenth0;
static long double ltenth0;

__attribute__((target("avx2"), noinline))
static void chunk_avx2(void)
{
	__m256d a = _mm256_loadu_pd(st.a);
	__m256d ainc = _mm256_setr_pd(0.25, 0.5, 1.0, 2.0);
	__m256i c = _mm256_loadu_si256((const __m256i *)st.c);
	__m256i cinc = _mm256_set1_epi64x(3);
	long double x = st.x;
	double s = st.s;

	for (int i = 0; i < CHUNK; i++) {
		a = _mm256_add_pd(a, ainc);
		c = _mm256_add_epi64(c, cinc);
		x += 1.0L;
		s += 0.125;
		__asm__ volatile("" : "+x"(a), "+x"(c), "+t"(x), "+x"(s));
	}
	_mm256_storeu_pd(st.a, a);
	_mm256_storeu_si256((__m256i *)st.c, c);
	st.x = x;
	st.s = s;
}

__attribute__((target("avx512f"), noinline))
static void chunk_avx512(void)
{
	__m512d z = _mm512_loadu_pd(st.z);
	__m512d zinc = _mm512_setr_pd(0.125, 0.25, 0.375, 0.5,
				      0.625, 0.75, 0.875, 1.0);

	for (int i = 0; i < CHUNK / 4; i++) {
		z = _mm512_add_pd(z, zinc);
		__asm__ volatile("" : "+v"(z));
	}
	_mm512_storeu_pd(st.z, z);
}

/* SSE2-only fallback for machines without AVX2 (x86-64 baseline). */
__attribute__((noinline))
static void chunk_sse2(void)
{
	__m128d a0 = _mm_loadu_pd(st.a), a1 = _mm_loadu_pd(st.a + 2);
	__m128d i0 = _mm_setr_pd(0.25, 0.5), i1 = _mm_setr_pd(1.0, 2.0);
	__m128i c0 = _mm_loadu_si128((const __m128i *)st.c);
	__m128i c1 = _mm_loadu_si128((const __m128i *)(st.c + 2));
	__m128i cinc = _mm_set1_epi64x(3);
	long double x = st.x;
	double s = st.s;

	for (int i = 0; i < CHUNK; i++) {
		a0 = _mm_add_pd(a0, i0);
		a1 = _mm_add_pd(a1, i1);
		c0 = _mm_add_epi64(c0, cinc);
		c1 = _mm_add_epi64(c1, cinc);
		x += 1.0L;
		s += 0.125;
		__asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(c0), "+x"(c1),
				 "+t"(x), "+x"(s));
	}
	_mm_storeu_pd(st.a, a0);
	_mm_storeu_pd(st.a + 2, a1);
	_mm_storeu_si128((__m128i *)st.c, c0);
	_mm_storeu_si128((__m128i *)(st.c + 2), c1);
	st.x = x;
	st.s = s;
}

static double div10(double v)
{
	volatile double ten = 10.0;

	return v / ten;
}

static long double ldiv10(long double v)
{
	volatile long double ten = 10.0L;

	return v / ten;
}

static void check(void)
{
	static const double ainc[4] = { 0.25, 0.5, 1.0, 2.0 };
	uint64_t n = st.n, zn = n / 4;
	unsigned short fcw;
	int k;

	for (k = 0; k < 4; k++) {
		if (st.a[k] != (double)n * ainc[k])
			fail("ymm double lane %d = %.17g, expected %.17g after %lu",
			     k, st.a[k], (double)n * ainc[k], (unsigned long)n);
		if (st.c[k] != (int64_t)(3 * n + k))
			fail("ymm int lane %d = %ld, expected %lu", k,
			     (long)st.c[k], (unsigned long)(3 * n + k));
	}
	if (have_avx512)
		for (k = 0; k < 8; k++)
			if (st.z[k] != (double)zn * 0.125 * (k + 1))
				fail("zmm lane %d = %.17g, expected %.17g", k,
				     st.z[k], (double)zn * 0.125 * (k + 1));
	if (st.x != (long double)n)
		fail("x87 = %Lg, expected %lu", st.x, (unsigned long)n);
	if (st.s != (double)n * 0.125)
		fail("sse scalar = %.17g, expected %.17g", st.s, (double)n * 0.125);

	if (fegetround() != FE_TOWARDZERO)
		fail("rounding mode %#x, expected FE_TOWARDZERO", fegetround());
	/* bits 0-5 are sticky exception flags: compare the control part */
	if ((_mm_getcsr() & ~0x3fu) != (mxcsr0 & ~0x3fu))
		fail("MXCSR %#x, expected %#x", _mm_getcsr(), mxcsr0);
	__asm__ volatile("fnstcw %0" : "=m"(fcw));
	if (fcw != fcw0)
		fail("x87 control word %#x, expected %#x", fcw, fcw0);
	if (div10(1.0) != tenth0)
		fail("1/10 rounds differently: %a vs %a", div10(1.0), tenth0);
	if (ldiv10(1.0L) != ltenth0)
		fail("x87 1/10 rounds differently");
}

int main(void)
{
	struct sigaction sa;
	int k;

	have_avx2 = !!__builtin_cpu_supports("avx2");
	have_avx512 = !!__builtin_cpu_supports("avx512f");
	for (k = 0; k < 4; k++)
		st.c[k] = k;

	if (fesetround(FE_TOWARDZERO))
		die("fesetround");
	mxcsr0 = _mm_getcsr();
	__asm__ volatile("fnstcw %0" : "=m"(fcw0));
	tenth0 = div10(1.0);
	ltenth0 = ldiv10(1.0L);
	/* round-to-nearest gives ...9a: the mode really is in effect */
	if (tenth0 == 0.1)
		die("round-toward-zero not in effect");

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr2;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGUSR2, &sa, NULL))
		die("sigaction");
	tgt_catch_term();

	say("ready avx2=%d avx512=%d", have_avx2, have_avx512);
	while (!test_stop) {
		if (have_avx2)
			chunk_avx2();
		else
			chunk_sse2();
		if (have_avx512)
			chunk_avx512();
		st.n += CHUNK;
		if (check_req) {
			check_req = 0;
			check();
			if (test_failed)
				return 1;
			say("check ok %lu", (unsigned long)st.n);
		}
	}
	check();
	return verdict();
}
