#!/bin/busybox sh
# PID 1 of the emulated-PKU VM (ci/pku/run.sh packs it as /init). Runs every jitmem test binary
# in /tests, then `jitmem selftest`, `jitmem probe` and a quick PerThread/Mirror benchmark, each
# as a child of this shell (a fault in PID 1 would take the VM down). Prints one
# `PKU-RESULT name passed failed perthread-made rc` line per binary, `PKU-SELFTEST rc perthread-passes`,
# and a last `FINAL: PASS` or `FINAL: FAIL ...` line, then powers off.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
# Unhandled-signal lines for the tests' deliberate faults would only add noise.
echo 0 > /proc/sys/debug/exception-trace 2>/dev/null

export HOME=/tmp RUST_BACKTRACE=1
export JITMEM_REQUIRE_PKU=1 JITMEM_CHILD_TIMEOUT=600 JITMEM_SLOW=1
cd /tmp

echo "pku-vm: kernel $(uname -r), $(grep -c ^processor /proc/cpuinfo) CPU(s)," \
  "cpuinfo flags: pku=$(grep -cw pku /proc/cpuinfo) ospke=$(grep -cw ospke /proc/cpuinfo)"

# Written by run.sh: test_timeout (seconds per binary), skip (lines `binary test`) and filters
# (lines `binary filter`: the binary runs only the tests whose names contain the filter).
test_timeout=300
skip=""
filters=""
[ -f /pku.env ] && . /pku.env

why=""
made_total=0
for t in /tests/*; do
  name=${t##*/}
  echo "=== pku-vm: $name (JITMEM_REQUIRE_PKU=1) $(cut -d' ' -f1 /proc/uptime)s"
  set -- --nocapture
  filter=$(echo "$filters" | awk -v b="$name" '$1 == b {print $2}')
  [ -z "$filter" ] || { echo "pku-vm: $name runs only the tests matching $filter"; set -- "$filter" "$@"; }
  for test in $(echo "$skip" | awk -v b="$name" '$1 == b {print $2}'); do
    echo "pku-vm: skipping $name::$test (PKU_SKIP)"
    [ "$1" = --exact ] || set -- --exact "$@"
    set -- "$@" --skip "$test"
  done
  rm -f /tmp/rc
  { timeout "$test_timeout" "$t" "$@" 2>&1; echo $? > /tmp/rc; } | tee "/tmp/$name.log"
  rc=$(cat /tmp/rc 2>/dev/null || echo missing)
  summary=$(grep '^test result:' "/tmp/$name.log" | tail -n 1)
  passed=$(echo "$summary" | sed -n 's/.* \([0-9][0-9]*\) passed.*/\1/p')
  failed=$(echo "$summary" | sed -n 's/.* \([0-9][0-9]*\) failed.*/\1/p')
  made=$(grep -o 'jitmem-test: made perthread/' "/tmp/$name.log" | wc -l)
  [ -n "$passed" ] || passed=0
  [ -n "$failed" ] || failed=0
  made_total=$((made_total + made))
  [ "$rc" = 143 ] && echo "pku-vm: $name did not finish within ${test_timeout}s: killed"
  echo "PKU-RESULT $name $passed $failed $made $rc"
  if [ "$rc" != 0 ] || [ "$failed" != 0 ] || [ -z "$summary" ]; then
    why="$why $name(rc=$rc,failed=$failed)"
  fi
done

echo "=== pku-vm: jitmem selftest $(cut -d' ' -f1 /proc/uptime)s"
{ /bin/jitmem selftest 2>&1; echo $? > /tmp/rc; } | tee /tmp/selftest.log
rc=$(cat /tmp/rc 2>/dev/null || echo missing)
pt_pass=$(grep -c '^perthread .* pass$' /tmp/selftest.log)
echo "PKU-SELFTEST $rc $pt_pass"
[ "$rc" = 0 ] || why="$why selftest(rc=$rc)"
[ "$pt_pass" -gt 0 ] || why="$why selftest(no-perthread-pass)"

echo "=== pku-vm: jitmem probe"
/bin/jitmem probe 2>&1

if [ -x /bin/jitmem-bench ]; then
  # Informational only: PerThread against Mirror in this same VM (absolute times under TCG mean
  # nothing). --quick divides the iteration counts by 10.
  echo "=== pku-vm: jitmem-bench --quick (PerThread vs Mirror, same VM) $(cut -d' ' -f1 /proc/uptime)s"
  /bin/jitmem-bench --quick --peers jitmem-mirror,jitmem-perthread --workloads alloc_free,patch \
    --timeout 300 > /tmp/bench.md 2> /tmp/bench.err
  echo "bench rc=$?"
  cat /tmp/bench.err /tmp/bench.md
  # Table rows: `| jitmem-mirror | jitmem Mirror, Pooled | 90.3 ns | 225 ns |`; the columns are
  # found by the header row's names.
  awk -F'|' '
    function ns(cell) { gsub(/[ ,]/, "", cell); sub(/ns$/, "", cell); return cell + 0 }
    { peer = $2; gsub(/ /, "", peer) }
    peer == "peer" { for (i = 3; i <= NF; i++) { h = $i; gsub(/ /, "", h); col[h] = i } }
    peer == "jitmem-mirror"    { ma = ns($col["alloc_free"]); mp = ns($col["patch"]) }
    peer == "jitmem-perthread" { pa = ns($col["alloc_free"]); pp = ns($col["patch"]) }
    END {
      if (ma > 0 && mp > 0 && pa > 0 && pp > 0)
        printf "PKU-BENCH perthread/mirror alloc_free %.2f (%.1f/%.1f ns) patch %.2f (%.1f/%.1f ns)\n", pa / ma, pa, ma, pp / mp, pp, mp
      else
        print "PKU-BENCH no ratios (a cell was missing or not a time)"
    }' /tmp/bench.md
fi

echo "pku-vm: done at $(cut -d' ' -f1 /proc/uptime)s, PerThread memories made by the tests: $made_total"
[ "$made_total" -gt 0 ] || why="$why no-perthread-memory-made"
if [ -z "$why" ]; then
  echo "FINAL: PASS"
else
  echo "FINAL: FAIL:$why"
fi
sync
poweroff -f
