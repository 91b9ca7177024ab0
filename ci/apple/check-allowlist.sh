#!/usr/bin/env bash
# jit_write_allow_callbacks! as libpthread will read it: builds a small aarch64-apple-darwin
# object with the macro (no Apple linker needed: an object is not linked) and checks its
# __DATA_CONST,__pth_jit_func section with the object crate (the user's callbacks, then
# jitmem's copy callback, then NULL) and its registration constructor in __mod_init_func; the
# same for jit_write_allow_callbacks!() (jitmem's callback alone); then checks that a second
# use in the same crate does not compile. Needs Debian's rustc (RUSTC=/usr/bin/rustc) with the
# standard library's source (rust-web-src) for -Zbuild-std=core.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target_dir=${ALLOWLIST_TARGET_DIR:-$here/../../target/apple-allowlist}
obj=$target_dir/allowlist.o
export RUSTC=${RUSTC:-/usr/bin/rustc} RUSTC_BOOTSTRAP=1
(cd "$here/allowlist-object" && CARGO_TARGET_DIR=$target_dir \
  cargo rustc -q -Zbuild-std=core --target aarch64-apple-darwin --release --lib -- --emit=obj="$obj")
(cd "$here/allowlist-check" && CARGO_TARGET_DIR=$target_dir/host cargo run -q -- "$obj" \
  allowlisted_first allowlisted_second)
(cd "$here/allowlist-object" && CARGO_TARGET_DIR=$target_dir \
  cargo rustc -q -Zbuild-std=core --target aarch64-apple-darwin --release --lib --features empty \
  -- --emit=obj="$target_dir/empty.o")
(cd "$here/allowlist-check" && CARGO_TARGET_DIR=$target_dir/host cargo run -q -- "$target_dir/empty.o")
if (cd "$here/allowlist-object" && CARGO_TARGET_DIR=$target_dir \
  cargo rustc -q -Zbuild-std=core --target aarch64-apple-darwin --release --lib --features twice \
  -- --emit=obj="$target_dir/twice.o") 2>"$target_dir/twice.err"; then
  echo "FAIL: a second jit_write_allow_callbacks! in the same crate compiled" >&2
  exit 1
fi
grep -q 'symbol .JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP. is already defined' "$target_dir/twice.err" || {
  echo "FAIL: the second use failed for another reason:" >&2
  cat "$target_dir/twice.err" >&2
  exit 1
}
echo "ok: a second jit_write_allow_callbacks! in the same crate does not compile"
