//! The workloads: each drives one [`Peer`], runs every function it writes, checks the value it
//! returns, and checks with an interval set that no block handed out overlaps a live one.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jitmem::isa::{RETURN_CONSTANT_PATCH_OFFSET, patch_return_constant, return_constant};

use crate::peers::{self, Handle, MakeError, Peer, Publish};

/// Every workload, in table order.
pub const WORKLOADS: [&str; 7] = [
    "alloc_free",
    "alloc_free_frag",
    "patch",
    "churn",
    "overhead",
    "threads",
    "race",
];

/// Timed batches per measurement; the cell is their median.
const BATCHES: usize = 7;
/// Blocks that one-mapping-per-function peers allocate to fragment their "heap": each is a
/// mapping, and the process may hold at most `vm.max_map_count` (65,530 by default).
const MAPPING_FILL_CAP: usize = 20_000;
/// Live blocks in `churn` before each new block frees a random one.
const CHURN_LIVE: usize = 1_000;
/// The seed of the `churn` sizes and choices (xorshift64).
const SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// How long the workloads run.
#[derive(Clone, Copy, Debug)]
pub struct Scale {
    /// Iteration counts divided by 10, for a smoke run.
    pub quick: bool,
}

impl Scale {
    /// `full`, or a tenth of it in a quick run.
    fn pick(self, full: usize) -> usize {
        if self.quick { (full / 10).max(1) } else { full }
    }
}

/// What a child process reports: the table cell and notes for the footnotes.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The text of the cell.
    pub cell: String,
    /// Footnotes attached to the cell.
    pub notes: Vec<String>,
}

/// Why a workload stopped.
#[derive(Debug)]
enum Failure {
    /// A block was handed out that overlaps a live one.
    Overlap(String),
    /// A function returned something else than what was written.
    WrongValue(String),
    /// The peer returned an error.
    Peer(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Peer(e)
    }
}

/// Runs `workload` on the peer called `peer` and says what to put in the table.
pub fn run(workload: &str, peer: &str, scale: Scale) -> Outcome {
    let Some(info) = peers::info(peer) else {
        return Outcome {
            cell: format!("error: no peer {peer:?}"),
            notes: Vec::new(),
        };
    };
    let mut p = match peers::make(peer) {
        Ok(p) => p,
        Err(e @ MakeError::Unavailable(_)) => {
            return Outcome {
                cell: "unavailable".into(),
                notes: vec![format!("{peer}: {e}")],
            };
        }
        Err(e) => {
            return Outcome {
                cell: "error".into(),
                notes: vec![format!("{peer}: {e}")],
            };
        }
    };
    let mut notes = Vec::new();
    let p = &mut *p;
    let result = match workload {
        "alloc_free" => alloc_free(p, scale, 0),
        "alloc_free_frag" => {
            let full = (64 << 20) / 128;
            let fill = if info.mapping_per_function {
                notes.push(format!(
                    "one mapping per function: the fragmented fill is capped at {} blocks of 128 \
                     bytes (not 64 MiB worth, {full}) to stay under vm.max_map_count",
                    scale.pick(MAPPING_FILL_CAP)
                ));
                scale.pick(MAPPING_FILL_CAP)
            } else {
                scale.pick(full)
            };
            alloc_free(p, scale, fill)
        }
        "patch" => patch(p, scale),
        "churn" => churn_cell(p, scale),
        "overhead" => {
            if info.mapping_per_function {
                notes.push(
                    "the kernel merges adjacent anonymous mappings with equal protections into \
                     one VMA (one /proc/self/maps line), so a mapping per function adds few lines \
                     while they are allocated in a row"
                        .into(),
                );
            }
            overhead(p, scale)
        }
        "threads" => {
            notes.push(format!("{}: {}", info.name, info.threads));
            threads(p, scale)
        }
        "race" => race(p, scale),
        other => Err(Failure::Peer(format!("no workload {other:?}"))),
    };
    let cell = match result {
        Ok(cell) => cell,
        Err(Failure::Overlap(what)) => {
            notes.push(format!("{peer}, {workload}: {what}"));
            "overlap detected".into()
        }
        Err(Failure::WrongValue(what)) => {
            notes.push(format!("{peer}, {workload}: {what}"));
            "wrong value".into()
        }
        Err(Failure::Peer(what)) => {
            notes.push(format!("{peer}, {workload}: {what}"));
            "error".into()
        }
    };
    Outcome { cell, notes }
}

/// The live blocks, as address intervals.
#[derive(Default)]
struct LiveSet {
    /// start -> end (exclusive).
    map: BTreeMap<usize, usize>,
}

impl LiveSet {
    /// The live interval that `[start, start + len)` overlaps, if any.
    fn conflict(&self, start: usize, len: usize) -> Option<(usize, usize)> {
        let end = start + len;
        if let Some((&s, &e)) = self.map.range(..=start).next_back() {
            if e > start {
                return Some((s, e));
            }
        }
        match self.map.range(start..).next() {
            Some((&s, &e)) if s < end => Some((s, e)),
            _ => None,
        }
    }

    /// Checks a block against the live set (without adding it).
    fn check(&self, start: usize, len: usize, what: &dyn Fn() -> String) -> Result<(), Failure> {
        match self.conflict(start, len) {
            None => Ok(()),
            Some((s, e)) => Err(Failure::Overlap(format!(
                "{}: new block {start:#x}..{:#x} ({len} bytes) overlaps the live block \
                 {s:#x}..{e:#x}",
                what(),
                start + len
            ))),
        }
    }

    /// Adds a new block, refusing one that overlaps a live block.
    fn insert(
        &mut self,
        start: usize,
        len: usize,
        what: &dyn Fn() -> String,
    ) -> Result<(), Failure> {
        self.check(start, len, what)?;
        self.map.insert(start, start + len);
        Ok(())
    }

    fn remove(&mut self, start: usize) {
        self.map.remove(&start);
    }
}

/// Checks that sorted-or-not intervals `(start, len)` are pairwise disjoint (sorts them).
fn check_disjoint(ranges: &mut [(usize, usize)], what: &str) -> Result<(), Failure> {
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((a, alen), (b, blen)) = (pair[0], pair[1]);
        if a + alen > b {
            return Err(Failure::Overlap(format!(
                "{what}: live blocks {a:#x}..{:#x} and {b:#x}..{:#x} overlap",
                a + alen,
                b + blen
            )));
        }
    }
    Ok(())
}

/// xorshift64: deterministic pseudo-random numbers.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// A `return_constant(value)` function padded with traps to `len` bytes (at least 16).
fn function_bytes(len: usize, value: u32) -> Vec<u8> {
    let mut code = return_constant(value);
    let mut traps = vec![0u8; len.saturating_sub(code.len())];
    jitmem::isa::fill_traps(&mut traps);
    code.extend_from_slice(&traps);
    code
}

/// Calls the block's function and checks that it returns `expected`.
fn call(
    peer: &dyn Peer,
    h: Handle,
    expected: u32,
    what: &dyn Fn() -> String,
) -> Result<(), Failure> {
    // SAFETY: every block the workloads call was written with a complete `return_constant`
    // function and published by `Peer::write`, and stays allocated during the call.
    let f = unsafe { peer.function(h) }?;
    let got = f();
    if got == expected {
        Ok(())
    } else {
        Err(Failure::WrongValue(format!(
            "{}: expected {expected:#x}, the function returned {got:#x}",
            what()
        )))
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn per(elapsed: Duration, n: usize) -> f64 {
    elapsed.as_nanos() as f64 / n.max(1) as f64
}

/// `1234567` -> `1,234,567`.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Nanoseconds for a cell: 3 significant digits below 100, grouped integers above.
fn ns(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2} ns")
    } else if x < 100.0 {
        format!("{x:.1} ns")
    } else {
        format!("{} ns", group(x.round() as u64))
    }
}

/// A rate per second, with k/M suffixes.
fn rate(per_second: f64) -> String {
    if per_second >= 1e6 {
        format!("{:.2}M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1}k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0}/s")
    }
}

/// `alloc_free` (`fill` = 0) and `alloc_free_frag`: 128-byte alloc+free pairs, after `fill`
/// 128-byte blocks of which every other one is freed again.
fn alloc_free(peer: &mut dyn Peer, scale: Scale, fill: usize) -> Result<String, Failure> {
    const LEN: usize = 128;
    let mut live = LiveSet::default();
    let mut kept = Vec::with_capacity(fill / 2 + 1);
    for i in 0..fill {
        let h = peer.alloc(LEN)?;
        live.insert(peer.addr(h), LEN, &|| format!("fill block {i}"))?;
        if i % 2 == 0 {
            kept.push(h);
        } else {
            live.remove(peer.addr(h));
            peer.free(h)?;
        }
    }
    let pairs = scale.pick(100_000);
    let mut addrs = Vec::with_capacity(pairs);
    let mut times = Vec::with_capacity(BATCHES);
    // One untimed batch to warm up, then the timed ones. The new blocks are checked against
    // the live set after each batch (nothing is written to them, so nothing is harmed before).
    for batch in 0..=BATCHES {
        addrs.clear();
        let start = Instant::now();
        for _ in 0..pairs {
            let h = peer.alloc(LEN)?;
            addrs.push(peer.addr(h));
            peer.free(h)?;
        }
        let elapsed = start.elapsed();
        if batch > 0 {
            times.push(per(elapsed, pairs));
        }
        for (i, &a) in addrs.iter().enumerate() {
            live.check(a, LEN, &|| format!("pair {i} of batch {batch}"))?;
        }
    }
    for h in kept {
        peer.free(h)?;
    }
    Ok(ns(median(times)))
}

/// `patch`: write a new 4-byte constant into a live function, publish, call and check.
fn patch(peer: &mut dyn Peer, scale: Scale) -> Result<String, Failure> {
    let h = peer.alloc(16)?;
    peer.write(h, 0, &return_constant(0), Publish::Local)?;
    call(peer, h, 0, &|| "first call".into())?;
    let n = scale.pick(100_000);
    let mut times = Vec::with_capacity(BATCHES);
    let mut value = 0u32;
    for batch in 0..=BATCHES {
        let start = Instant::now();
        for _ in 0..n {
            value = value.wrapping_add(1);
            let bytes = value.to_le_bytes();
            peer.write(h, RETURN_CONSTANT_PATCH_OFFSET, &bytes, Publish::Atomic)?;
            call(peer, h, value, &|| format!("after patch {value}"))?;
        }
        if batch > 0 {
            times.push(per(start.elapsed(), n));
        }
    }
    peer.free(h)?;
    Ok(ns(median(times)))
}

/// A live block of `churn`.
struct Live {
    h: Handle,
    value: u32,
    addr: usize,
    len: usize,
}

/// `churn`: `n` blocks of 16..=2048 bytes, each allocated, written, published, called; once
/// [`CHURN_LIVE`] are live, each new block frees a random live one (called first, to check it
/// is intact). Returns the time of the loop and the blocks still live.
fn churn(peer: &mut dyn Peer, n: usize, seed: u64) -> Result<(Duration, Vec<Live>), Failure> {
    let mut rng = XorShift(seed);
    let mut template = function_bytes(2048, 0);
    let mut set = LiveSet::default();
    let mut live: Vec<Live> = Vec::with_capacity(CHURN_LIVE + 1);
    let start = Instant::now();
    for i in 0..n {
        let len = 16 + (rng.next() % (2048 - 16 + 1)) as usize;
        let h = peer.alloc(len)?;
        let addr = peer.addr(h);
        set.insert(addr, len, &|| format!("block {i} of {n}"))?;
        let value = (i as u32).wrapping_mul(0x9E37_79B1) ^ (seed as u32);
        patch_return_constant(&mut template, value);
        peer.write(h, 0, &template[..len], Publish::Local)?;
        call(peer, h, value, &|| format!("block {i} just written"))?;
        live.push(Live {
            h,
            value,
            addr,
            len,
        });
        if live.len() >= CHURN_LIVE {
            let victim = live.swap_remove((rng.next() % live.len() as u64) as usize);
            call(peer, victim.h, victim.value, &|| {
                format!(
                    "live block {:#x} before its free (at block {i})",
                    victim.addr
                )
            })?;
            set.remove(victim.addr);
            peer.free(victim.h)?;
        }
    }
    Ok((start.elapsed(), live))
}

fn free_all(peer: &mut dyn Peer, live: Vec<Live>) -> Result<(), Failure> {
    for block in live {
        peer.free(block.h)?;
    }
    Ok(())
}

/// The `churn` cell: ns per block, median of five rounds.
fn churn_cell(peer: &mut dyn Peer, scale: Scale) -> Result<String, Failure> {
    let n = scale.pick(20_000);
    let mut times = Vec::new();
    for round in 0..5 {
        let (elapsed, live) = churn(peer, n, SEED ^ round)?;
        free_all(peer, live)?;
        times.push(per(elapsed, n));
    }
    Ok(ns(median(times)))
}

/// Rounds of the `threads` workload, each one thread alone and then two at once (interleaved, so
/// that a slow spell of the machine weighs on both); the cell is the median.
const THREAD_ROUNDS: usize = 7;

/// Puts `prefix` in front of a failure's description.
fn context(failure: Failure, prefix: &str) -> Failure {
    match failure {
        Failure::Overlap(s) => Failure::Overlap(format!("{prefix}: {s}")),
        Failure::WrongValue(s) => Failure::WrongValue(format!("{prefix}: {s}")),
        Failure::Peer(s) => Failure::Peer(format!("{prefix}: {s}")),
    }
}

/// What one thread of `threads` reports: its churn time per round, and the blocks it had live at
/// the end of each round (while the other thread's were live too).
type ThreadResult = Result<Vec<(Duration, Vec<(usize, usize)>)>, Failure>;

/// `threads`: rounds of churn on this thread alone, then on two threads at once (one peer each,
/// made by [`Peer::thread_maker`]: sharing the allocator where the peer can).
fn threads(peer: &mut dyn Peer, scale: Scale) -> Result<String, Failure> {
    let n = scale.pick(20_000);
    let makers = [peer.thread_maker(), peer.thread_maker()];
    // This thread and the two workers: start of the two-thread run, its end (every block of
    // both still live), and the workers' frees done.
    let start = Barrier::new(3);
    let end = Barrier::new(3);
    let freed = Barrier::new(3);
    let mut single: Vec<Result<Duration, Failure>> = Vec::with_capacity(THREAD_ROUNDS);
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let workers: Vec<_> = makers
            .into_iter()
            .enumerate()
            .map(|(t, maker)| {
                let (start, end, freed) = (&start, &end, &freed);
                s.spawn(move || -> ThreadResult {
                    // Every party passes every barrier, even after a failure, so that none
                    // waits for ever.
                    let (mut peer, mut failure) = match maker() {
                        Ok(p) => (Some(p), None),
                        Err(e) => (None, Some(Failure::Peer(e))),
                    };
                    let mut rounds = Vec::with_capacity(THREAD_ROUNDS);
                    for round in 0..THREAD_ROUNDS {
                        start.wait();
                        let seed = SEED.wrapping_add((round * 2 + t + 1) as u64);
                        let result = match (&failure, peer.as_mut()) {
                            (None, Some(p)) => Some(churn(&mut **p, n, seed)),
                            _ => None,
                        };
                        end.wait();
                        match result {
                            Some(Ok((elapsed, live))) => {
                                let ranges = live.iter().map(|b| (b.addr, b.len)).collect();
                                if let Some(p) = peer.as_mut() {
                                    if let Err(f) = free_all(&mut **p, live) {
                                        failure = Some(f);
                                    }
                                }
                                rounds.push((elapsed, ranges));
                            }
                            Some(Err(f)) => {
                                let what = format!("2 threads, thread {t}, run {round}");
                                failure = Some(context(f, &what));
                            }
                            None => {}
                        }
                        freed.wait();
                    }
                    match failure {
                        Some(f) => Err(f),
                        None => Ok(rounds),
                    }
                })
            })
            .collect();
        for round in 0..THREAD_ROUNDS {
            let failed = single.iter().any(Result::is_err);
            if !failed {
                let result = churn(peer, n, SEED ^ ((round as u64) << 32))
                    .map_err(|f| context(f, &format!("1 thread, run {round}")))
                    .and_then(|(elapsed, live)| free_all(peer, live).map(|()| elapsed));
                single.push(result);
            }
            start.wait();
            end.wait();
            freed.wait();
        }
        workers
            .into_iter()
            .map(|w| match w.join() {
                Ok(r) => r,
                Err(_) => Err(Failure::Peer("a churn thread panicked".into())),
            })
            .collect()
    });
    let single = single.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut per_thread = Vec::new();
    for result in results {
        per_thread.push(result?);
    }
    let mut both = Vec::with_capacity(THREAD_ROUNDS);
    let mut ratios = Vec::with_capacity(THREAD_ROUNDS);
    for (round, alone) in single.iter().enumerate() {
        let mut slowest = Duration::ZERO;
        let mut live = Vec::new();
        for rounds in &mut per_thread {
            let (elapsed, ranges) = &mut rounds[round];
            slowest = slowest.max(*elapsed);
            live.append(ranges);
        }
        let what = format!("2 threads, run {round}: blocks of the two threads, live at once");
        check_disjoint(&mut live, &what)?;
        let rate_both = 2.0 * n as f64 / slowest.as_secs_f64();
        let rate_alone = n as f64 / alone.as_secs_f64();
        both.push(rate_both);
        ratios.push(rate_both / rate_alone);
    }
    Ok(format!("{}, {:.2}×", rate(median(both)), median(ratios)))
}

/// `overhead`: physical memory (Pss) and mappings added by 10,000 live 100-byte functions.
fn overhead(peer: &mut dyn Peer, scale: Scale) -> Result<String, Failure> {
    const LEN: usize = 100;
    let n = scale.pick(10_000);
    // Everything the workload itself needs is allocated and touched before the first reading.
    peer.reserve(n);
    let mut handles: Vec<Handle> = vec![usize::MAX; n];
    let mut ranges: Vec<(usize, usize)> = vec![(usize::MAX, 0); n];
    handles.clear();
    ranges.clear();
    let mut code = function_bytes(LEN, 0);
    let pss_before = pss_kib()?;
    let maps_before = map_count()?;
    for _ in 0..n {
        let h = peer.alloc(LEN)?;
        handles.push(h);
        ranges.push((peer.addr(h), LEN));
    }
    // Checked before anything is written into them.
    check_disjoint(&mut ranges, "the 10,000 live functions")?;
    for (i, &h) in handles.iter().enumerate() {
        patch_return_constant(&mut code, i as u32);
        peer.write(h, 0, &code, Publish::Local)?;
        call(peer, h, i as u32, &|| format!("function {i}"))?;
    }
    let pss_after = pss_kib()?;
    let maps_after = map_count()?;
    for h in handles {
        peer.free(h)?;
    }
    let kib = pss_after as i64 - pss_before as i64;
    let maps = maps_after as i64 - maps_before as i64;
    let sign = if kib < 0 { "-" } else { "+" };
    Ok(format!(
        "{sign}{} KiB ({} B/fn), {maps:+} maps",
        group(kib.unsigned_abs()),
        (kib.max(0) as u64 * 1024) / n as u64
    ))
}

/// This process's proportional set size, in KiB (`/proc/self/smaps_rollup`).
fn pss_kib() -> Result<u64, Failure> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup")
        .map_err(|e| Failure::Peer(format!("reading /proc/self/smaps_rollup: {e}")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| Failure::Peer("no Pss line in /proc/self/smaps_rollup".into()))
}

/// Lines of `/proc/self/maps`.
fn map_count() -> Result<usize, Failure> {
    let text = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| Failure::Peer(format!("reading /proc/self/maps: {e}")))?;
    Ok(text.lines().count())
}

/// `race`: one thread calls a function in a loop while this one patches its constant; jitmem
/// publishes with `publish_live()` every 64 patches. Toggle peers are expected to crash (their
/// write window makes the page non-executable): the parent reports the signal.
fn race(peer: &mut dyn Peer, scale: Scale) -> Result<String, Failure> {
    const BASE: u32 = 0x1000_0000;
    let n = scale.pick(100_000) as u32;
    let h = peer.alloc(16)?;
    peer.write(h, 0, &return_constant(BASE), Publish::Local)?;
    call(peer, h, BASE, &|| "first call".into())?;
    // SAFETY: the block holds a published function; it is freed only after the caller thread
    // has been joined.
    let f = unsafe { peer.function(h) }?;
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let bad = AtomicU64::new(u64::MAX);
    let mut patch_error = None;
    let mut patching = Duration::ZERO;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut count = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = f();
                if !(BASE..=BASE + n).contains(&v) {
                    bad.store(u64::from(v), Ordering::Relaxed);
                    break;
                }
                count += 1;
                calls.store(count, Ordering::Relaxed);
            }
        });
        while calls.load(Ordering::Relaxed) == 0 && bad.load(Ordering::Relaxed) == u64::MAX {
            std::hint::spin_loop();
        }
        let started = Instant::now();
        for k in 1..=n {
            // Every patch is visible to the running thread without a system call (jitmem:
            // one atomic store); every 64th also waits until no thread runs the old code.
            let mode = if k % 64 == 0 {
                Publish::Live
            } else {
                Publish::Atomic
            };
            let bytes = (BASE + k).to_le_bytes();
            if let Err(e) = peer.write(h, RETURN_CONSTANT_PATCH_OFFSET, &bytes, mode) {
                patch_error = Some(e);
                break;
            }
            if bad.load(Ordering::Relaxed) != u64::MAX {
                break;
            }
        }
        patching = started.elapsed();
        stop.store(true, Ordering::Relaxed);
    });
    if let Some(e) = patch_error {
        return Err(Failure::Peer(e));
    }
    let bad = bad.load(Ordering::Relaxed);
    if bad != u64::MAX {
        return Err(Failure::WrongValue(format!(
            "the calling thread saw {bad:#x}, never written (values {BASE:#x}..={:#x})",
            BASE + n
        )));
    }
    call(peer, h, BASE + n, &|| "after the last patch".into())?;
    peer.free(h)?;
    Ok(format!(
        "ok ({} calls in {:.0} ms)",
        group(calls.load(Ordering::Relaxed)),
        patching.as_secs_f64() * 1e3
    ))
}
