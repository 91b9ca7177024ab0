#!/usr/bin/env bash
# PerThread (protection keys) on a CPU that has them: boots Debian's cloud kernel under
# qemu-system-x86_64 with `-cpu max` (TCG emulates PKU; this machine's CPU has none) and an
# initramfs holding jitmem's test binaries, jitvm's unit tests (only its tier tests are run),
# `jitmem` and `jitmem-bench`. The guest (ci/pku/init.sh)
# runs them with JITMEM_REQUIRE_PKU=1, so a refused PerThread is a failure there. Exits non-zero
# unless the console shows every binary passed, the tests made PerThread memory, the selftest
# passed a PerThread row, and `FINAL: PASS`.
#
#   bash ci/pku/run.sh                         # from the repository root
#   PKU_CPU=max,-pku bash ci/pku/run.sh        # negative check: must fail
#
# Environment: PKU_CPU (qemu -cpu, default max); PKU_TIMEOUT (seconds for the whole VM, default
# 600) and PKU_TEST_TIMEOUT (per test binary in the guest, default 300); PKU_MEM (guest MiB,
# default 2048); PKU_PROFILE (the tests' cargo profile, release (default; measured faster in total
# than debug under TCG) or debug); PKU_BENCH=0 to leave the benchmark out; PKU_SKIP, e.g.
# "wx:some_test lifecycle:other_test", tests to skip (by exact name; none by default); PKU_ONLY,
# e.g. "per_thread_rights wx", the test binaries to run (by name; default all).
# Everything it makes goes to target/pku/ (kernel, initramfs, console.log): never committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
out=$repo/target/pku
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$repo/$CARGO_TARGET_DIR ;; esac
cpu=${PKU_CPU:-max}
vm_timeout=${PKU_TIMEOUT:-600}
test_timeout=${PKU_TEST_TIMEOUT:-300}
mem=${PKU_MEM:-2048}
bench=${PKU_BENCH:-1}
profile=${PKU_PROFILE:-release}
started=$SECONDS
mkdir -p "$out"

note() { printf 'pku: %s (%ds)\n' "$*" "$((SECONDS - started))"; }

# --- packages (skipped when installed) ---
updated=0
apt_update() { [ "$updated" = 1 ] || { apt-get update -qq; updated=1; }; }
need=()
for pkg in qemu-system-x86 cpio busybox-static jq; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  note "installing ${need[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# --- the kernel: Debian's cloud image (PKU support built in), only its vmlinuz ---
if [ ! -s "$out/vmlinuz" ]; then
  kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'; }
  k=$(kernel_pkg)
  if [ -z "$k" ]; then apt_update; k=$(kernel_pkg); fi
  [ -n "$k" ] || { echo "pku: cannot find the package behind linux-image-cloud-amd64" >&2; exit 1; }
  note "downloading $k"
  rm -f "$out"/linux-image-*.deb
  # _apt cannot write to target/: apt falls back to root and says so; that warning is noise.
  (cd "$out" && { apt-get download "$k" 2>&1 || { apt_update && apt-get download "$k" 2>&1; }; } | grep -v '^W: Download is performed unsandboxed' || true)
  deb=$(ls "$out"/"$k"_*.deb)
  dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards './boot/vmlinuz-*' > "$out/vmlinuz.part"
  mv "$out/vmlinuz.part" "$out/vmlinuz"
  rm -f "$deb"
fi

# --- the binaries: jitmem's test executables, and the release `jitmem` and `jitmem-bench`
# (CI's selftest step has already built the first) ---
note "building the jitmem test binaries ($profile)"
release=()
[ "$profile" = release ] && release=(--release)
cargo test "${release[@]}" -p jitmem --no-run --message-format=json 2> "$out/build.err" > "$out/build.json" || {
  cat "$out/build.err" >&2
  exit 1
}
# jitvm's tier tests too: its JIT's calls linked with patch_live on PerThread memory (only those
# tests run, see `filters` below; the rest of jitvm's suite reads files the guest does not have).
note "building jitvm's unit tests ($profile)"
cargo test "${release[@]}" -p jitvm --lib --no-run --message-format=json 2>> "$out/build.err" >> "$out/build.json" || {
  cat "$out/build.err" >&2
  exit 1
}
mapfile -t tests < <(jq -r 'select(.reason == "compiler-artifact" and .profile.test and .executable != null) | .executable' "$out/build.json")
[ ${#tests[@]} -gt 0 ] || { echo "pku: cargo built no test executable" >&2; exit 1; }
if [ -n "${PKU_ONLY:-}" ]; then
  only=()
  for exe in "${tests[@]}"; do
    name=$(basename "$exe")
    for want in $PKU_ONLY; do [ "${name%-*}" = "$want" ] && only+=("$exe"); done
  done
  [ ${#only[@]} -gt 0 ] || { echo "pku: PKU_ONLY=$PKU_ONLY matches no test binary" >&2; exit 1; }
  tests=("${only[@]}")
fi
note "building jitmem (and jitmem-bench) in release"
packages=(-p jitmem-cli)
[ "$bench" = 1 ] && packages+=(-p jitmem-bench)
cargo build --quiet --release "${packages[@]}"
bins=("$CARGO_TARGET_DIR/release/jitmem")
[ "$bench" = 1 ] && bins+=("$CARGO_TARGET_DIR/release/jitmem-bench")

# --- the initramfs: busybox, /init, the binaries and the libraries they load ---
root=$out/root
rm -rf "$root"
mkdir -p "$root"/{bin,tests,proc,sys,dev,tmp}
cp /bin/busybox "$root/bin/busybox"
cp ci/pku/init.sh "$root/init"
chmod 755 "$root/init"
{
  echo "test_timeout=$test_timeout"
  printf 'skip="%s"\n' "$(tr ' ' '\n' <<< "${PKU_SKIP:-}" | sed -n 's/^\([^:]*\):\(.*\)$/\1 \2/p')"
  # Per binary, the one test-name filter it runs with (lines `binary filter`).
  echo 'filters="jitvm tier::tests"'
} > "$root/pku.env"
copy_libs() {
  ldd "$1" | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] || { mkdir -p "$root$(dirname "$lib")"; cp -L "$lib" "$root$lib"; }
  done
}
for exe in "${tests[@]}"; do
  name=$(basename "$exe")
  name=${name%-*}        # drop cargo's hash
  [ "$name" = jitmem ] && name=jitmem-unit
  # Debug info is most of a debug binary and only slows the initramfs down; symbols stay.
  objcopy --strip-debug "$exe" "$root/tests/$name"
  copy_libs "$exe"
done
for exe in "${bins[@]}"; do
  objcopy --strip-debug "$exe" "$root/bin/$(basename "$exe")"
  copy_libs "$exe"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out/init.cpio.gz"
note "initramfs $(du -h "$out/init.cpio.gz" | cut -f1): ${#tests[@]} test binaries ($(ls "$root/tests" | tr '\n' ' '))"

# --- boot ---
note "booting qemu-system-x86_64 -cpu $cpu -accel tcg (timeout ${vm_timeout}s)"
console=$out/console.log
vm_status=0
timeout --kill-after=10 "$vm_timeout" qemu-system-x86_64 -M pc -cpu "$cpu" -accel tcg -m "$mem" -smp 1 \
  -nographic -no-reboot -net none -kernel "$out/vmlinuz" -initrd "$out/init.cpio.gz" \
  -append 'console=ttyS0 panic=-1 quiet' < /dev/null | tee "$console" || vm_status=$?
note "the VM stopped"
if [ "$vm_status" = 124 ] || [ "$vm_status" = 137 ]; then
  echo "pku: FAIL: the VM did not power off within ${vm_timeout}s (timeout; raise PKU_TIMEOUT?)" >&2
fi

# --- the verdict, from the console alone (qemu exits 0 whatever happened inside) ---
log=$(tr -d '\r' < "$console")
fail=()
[ "$vm_status" = 0 ] || fail+=("qemu exit status $vm_status")
printf '\n%-20s %7s %7s %10s %4s\n' binary passed failed perthread rc
made_total=0
nresults=0
while read -r _ name passed failed made rc; do
  printf '%-20s %7s %7s %10s %4s\n' "$name" "$passed" "$failed" "$made" "$rc"
  nresults=$((nresults + 1))
  made_total=$((made_total + made))
  if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then fail+=("$name failed (rc $rc, $failed failed)"); fi
done < <(grep '^PKU-RESULT ' <<< "$log" || true)
printf '%-20s %7s %7s %10s\n' total \
  "$(grep '^PKU-RESULT ' <<< "$log" | awk '{s += $3} END {print s + 0}')" \
  "$(grep '^PKU-RESULT ' <<< "$log" | awk '{s += $4} END {print s + 0}')" "$made_total"
[ "$nresults" = "${#tests[@]}" ] || fail+=("results for $nresults of ${#tests[@]} test binaries")
[ "$made_total" -gt 0 ] || fail+=("the tests made no PerThread memory")
selftest=$(grep '^PKU-SELFTEST ' <<< "$log" || true)
echo "selftest: $(grep -E '^[0-9]+ passed, [0-9]+ failed' <<< "$log" | tail -n 1) (PerThread pass rows: $(awk '{print $3}' <<< "$selftest"))"
[ -n "$selftest" ] && [ "$(awk '{print $2}' <<< "$selftest")" = 0 ] || fail+=("jitmem selftest failed or did not run")
[ -n "$selftest" ] && [ "$(awk '{print $3}' <<< "$selftest")" -gt 0 ] || fail+=("jitmem selftest has no PerThread pass row")
grep '^PKU-BENCH ' <<< "$log" || true
grep -q '^FINAL: PASS' <<< "$log" || fail+=("the console has no 'FINAL: PASS' ($(grep '^FINAL:' <<< "$log" || echo 'no FINAL line'))")
if [ ${#fail[@]} -gt 0 ]; then
  printf 'pku: FAIL: %s\n' "${fail[@]}" >&2
  note "failed; console in $console"
  exit 1
fi
note "PASS: PerThread ran on emulated protection keys (-cpu $cpu)"
