/* A stand-in for the C library's stdlib.h in the Apple header check (check-headers.sh): no
 * Apple SDK here, and the host's glibc headers do not parse for an Apple target. jitmem.h uses
 * nothing from it; libc++'s <stdlib.h> wrapper needs the div types. */
#ifndef JITMEM_APPLE_CHECK_STDLIB_H
#define JITMEM_APPLE_CHECK_STDLIB_H
typedef struct { int quot, rem; } div_t;
typedef struct { long quot, rem; } ldiv_t;
typedef struct { long long quot, rem; } lldiv_t;
ldiv_t ldiv(long, long);
lldiv_t lldiv(long long, long long);
#endif
