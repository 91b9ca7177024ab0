#!/usr/bin/env bash
# The C API header (jitmem.h, as C11) and the C++ CodeGen header (MemoryUtil.h, with headers.cpp,
# as C++17) compiled by clang for arm64-apple-macos, x86_64-apple-macos and arm64-apple-ios:
# Apple's predefined macros, data model and C++ ABI, warnings as errors. Nothing is linked or run.
# There is no Apple SDK here: the C library is clang's freestanding headers plus include/stdlib.h,
# and the C++ library libc++'s headers (Debian's libc++-dev). Needs clang and libc++-dev.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
api="$here/../../crates/jitmem-capi/include"
libcxx=/usr/include/c++/v1 # libc++-dev
for target in arm64-apple-macos11 x86_64-apple-macos10.12 arm64-apple-ios14; do
  flags=(-target "$target" -ffreestanding -nostdlibinc -isystem "$here/include" -I "$api"
         -Wall -Wextra -Wpedantic -Werror -fsyntax-only)
  clang -std=c11 -x c "${flags[@]}" "$api/jitmem.h"
  clang++ -std=c++17 -nostdinc++ -isystem "$libcxx" "${flags[@]}" "$here/headers.cpp"
  echo "$target: jitmem.h (C11) and MemoryUtil.h (C++17) compile"
done
