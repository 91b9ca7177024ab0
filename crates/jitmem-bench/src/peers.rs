//! The allocators compared, each behind the [`Peer`] trait: jitmem in four configurations, its
//! Rust peers (jit-allocator, region, memmap2, dynasmrt), the C++ asmjit `JitAllocator` in two
//! modes (through `cpp/asmjit_peer.cpp`, when `libasmjit-dev` was installed at build time), and
//! two floors: [`FloorPeer`] (the least a pooled allocator can do: a bump pointer and exact-size
//! free lists over one dual-mapped region, no lock, no checks) and [`MprotectFloorPeer`] (the
//! least an mprotect-toggling allocator can do: one mapping per function, a raw `mprotect` pair
//! per write).
//!
//! Left out: **cranelift-jit**'s memory providers (`SystemMemoryProvider`,
//! `ArenaMemoryProvider`, checked in 0.135). Their public `JITMemoryProvider` trait can be used
//! without a `JITModule`, but it is a bump allocator for a whole module: `allocate` hands out
//! memory, `finalize` makes *everything allocated so far* read-execute, and `free_memory` frees
//! *everything*. There is no way to free one function (so `alloc_free`, `churn`, `threads` and
//! the fragmented variant cannot be expressed) nor to make finalized code writable again (so
//! `patch` and `race` cannot either). Its signatures also name `cranelift_module::ModuleResult`,
//! which pulls in `cranelift-codegen`, the largest crate of the Cranelift tree, for an allocator
//! that could fill one column of seven (`overhead`). cranelift-jit's providers are compared with
//! jitmem's provider (`crates/jitmem-cranelift`) where they can be: whole modules defined,
//! finalized, called and freed, in `cargo bench -p jitmem-cranelift --bench modules`.

use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use jitmem::{CodeBlock, Config, Error, JitMemory, Layout, Strategy};

/// The signature of every function the workloads run: `extern "C" fn() -> u32`.
pub type Fn0 = extern "C" fn() -> u32;

/// An allocation of a peer, as an index into the peer's own table.
pub type Handle = usize;

/// How a write is made visible to instruction fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Publish {
    /// Only this thread will run the code next (jitmem: `publish()`).
    Local,
    /// Other threads may be running this code (jitmem: `publish_live()`, a `membarrier`
    /// sync-core; the other peers have no such call and do the same as `Local`).
    Live,
    /// An aligned 4-byte constant that other threads may be running across, replaced with one
    /// atomic store and no system call (jitmem: `patch_live` on x86-64, where the constant is
    /// an instruction's immediate, `patch_live_data` on AArch64, where it is a literal; a
    /// strategy that refuses live patches (Toggle) falls back to a write scope and `publish()`;
    /// the other peers have no such call and do the same as `Local`).
    Atomic,
}

/// One executable-memory allocator, driven the same way by every workload.
///
/// A block is allocated, written (and published) through [`write`](Peer::write) any number of
/// times, run through [`function`](Peer::function), and freed. Peers are used by one thread;
/// the `threads` workload makes one per thread with [`thread_maker`](Peer::thread_maker).
pub trait Peer {
    /// Allocates a block of at least `len` bytes.
    fn alloc(&mut self, len: usize) -> Result<Handle, String>;

    /// The executable address of the block's first byte.
    fn addr(&self, h: Handle) -> usize;

    /// Writes `bytes` at `offset` in the block, then makes the block executable again and its
    /// instruction bytes coherent (what the peer calls publish, finalize or make_exec).
    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        publish: Publish,
    ) -> Result<(), String>;

    /// The block's first byte as a function.
    ///
    /// # Safety
    /// The block holds a complete, published `extern "C" fn() -> u32`, and stays allocated (and
    /// executable) while the returned pointer is called.
    unsafe fn function(&self, h: Handle) -> Result<Fn0, String> {
        let addr = self.addr(h) as *const u8;
        // SAFETY: a data pointer and a function pointer have the same size here; the caller
        // promises the address holds a published function of this signature.
        Ok(unsafe { std::mem::transmute::<*const u8, Fn0>(addr) })
    }

    /// Frees the block.
    fn free(&mut self, h: Handle) -> Result<(), String>;

    /// Makes room for `n` live blocks in the peer's own tables, touching the memory now, so
    /// that a later measurement of physical memory counts only the allocator.
    fn reserve(&mut self, n: usize);

    /// Something that makes, on another thread, a peer for that thread: sharing this peer's
    /// allocator where it is thread-safe, a new instance otherwise (see [`PeerInfo::threads`]).
    fn thread_maker(&self) -> PeerMaker;
}

/// Makes a [`Peer`] on the thread that calls it.
pub type PeerMaker = Box<dyn FnOnce() -> Result<Box<dyn Peer>, String> + Send>;

/// A peer's fixed facts, for the table and its notes.
#[derive(Clone, Copy, Debug)]
pub struct PeerInfo {
    /// The name used on the command line and as the table row.
    pub name: &'static str,
    /// How it keeps W^X and lays out memory, in a few words.
    pub kind: &'static str,
    /// Each function is its own mapping (so the `vm.max_map_count` limit applies).
    pub mapping_per_function: bool,
    /// Its write scopes make the code non-executable meanwhile (mprotect toggling).
    pub toggles: bool,
    /// What the two threads of the `threads` workload share.
    pub threads: &'static str,
}

/// Every peer, in table order.
pub const PEERS: [PeerInfo; 13] = [
    PeerInfo {
        name: "jitmem-mirror",
        kind: "jitmem Mirror, Pooled",
        mapping_per_function: false,
        toggles: false,
        threads: "one JitMemory shared by both threads",
    },
    PeerInfo {
        name: "jitmem-mirror-arena",
        kind: "jitmem Mirror, Arena 256 MiB",
        mapping_per_function: false,
        toggles: false,
        threads: "one JitMemory shared by both threads",
    },
    PeerInfo {
        name: "jitmem-toggle",
        kind: "jitmem Toggle, Pooled",
        mapping_per_function: false,
        toggles: true,
        threads: "one JitMemory shared by both threads",
    },
    PeerInfo {
        name: "jitmem-toggle-peralloc",
        kind: "jitmem Toggle, PerAllocation",
        mapping_per_function: true,
        toggles: true,
        threads: "one JitMemory shared by both threads",
    },
    PeerInfo {
        name: "jitmem-perthread",
        kind: "jitmem PerThread (pkeys), Pooled",
        mapping_per_function: false,
        toggles: false,
        threads: "one JitMemory shared by both threads",
    },
    PeerInfo {
        name: "jit-allocator",
        kind: "dual mapping, pooled (asmjit port)",
        mapping_per_function: false,
        toggles: false,
        threads: "one JitAllocator per thread: it is Send but not Sync (alloc and release take &mut self)",
    },
    PeerInfo {
        name: "asmjit-rwx",
        kind: "RWX pages, pooled (C++ asmjit JitAllocator)",
        mapping_per_function: false,
        toggles: false,
        threads: ASMJIT_THREADS,
    },
    PeerInfo {
        name: "asmjit-dual",
        kind: "dual mapping, pooled (C++ asmjit JitAllocator)",
        mapping_per_function: false,
        toggles: false,
        threads: ASMJIT_THREADS,
    },
    PeerInfo {
        name: "region",
        kind: "mprotect toggle, mapping per function",
        mapping_per_function: true,
        toggles: true,
        threads: "one mapping per function, nothing to share (region::Allocation is not Send)",
    },
    PeerInfo {
        name: "memmap2",
        kind: "mprotect toggle, mapping per function",
        mapping_per_function: true,
        toggles: true,
        threads: "one mapping per function, nothing to share",
    },
    PeerInfo {
        name: "dynasmrt",
        kind: "mprotect toggle, buffer (mapping) per function",
        mapping_per_function: true,
        toggles: true,
        threads: "one mapping per function, nothing to share",
    },
    PeerInfo {
        name: "floor",
        kind: "bump + exact free lists, dual map, no checks (the floor)",
        mapping_per_function: false,
        toggles: false,
        threads: "one floor per thread: it has no lock",
    },
    PeerInfo {
        name: "mprotect-floor",
        kind: "raw mprotect RW/RX per write, mapping per function (Toggle's floor)",
        mapping_per_function: true,
        toggles: true,
        threads: "one mapping per function, nothing to share",
    },
];

/// What the two threads share in the asmjit peers.
const ASMJIT_THREADS: &str = "one JitAllocator shared by both threads: it is thread-safe (a mutex \
                              around alloc and release)";

/// The resolved version of a peer crate, or asmjit's (`None` when the build left it out), as
/// recorded by the build script.
pub fn version(name: &str) -> Option<&'static str> {
    match name {
        "jit-allocator" => Some(env!("JB_VERSION_JIT_ALLOCATOR")),
        "region" => Some(env!("JB_VERSION_REGION")),
        "memmap2" => Some(env!("JB_VERSION_MEMMAP2")),
        "dynasmrt" => Some(env!("JB_VERSION_DYNASMRT")),
        "asmjit-rwx" | "asmjit-dual" => Some(env!("JB_VERSION_ASMJIT")).filter(|v| !v.is_empty()),
        _ => None,
    }
}

/// The facts of the peer called `name`.
pub fn info(name: &str) -> Option<PeerInfo> {
    PEERS.iter().copied().find(|p| p.name == name)
}

/// Why a peer cannot be created.
#[derive(Debug)]
pub enum MakeError {
    /// The platform refuses it (jitmem's `Error::Unsupported`): a table cell, not a failure.
    Unavailable(String),
    /// Anything else.
    Failed(String),
}

impl fmt::Display for MakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MakeError::Unavailable(why) => write!(f, "unavailable: {why}"),
            MakeError::Failed(why) => write!(f, "error: {why}"),
        }
    }
}

/// Creates the peer called `name`.
pub fn make(name: &str) -> Result<Box<dyn Peer>, MakeError> {
    let jitmem = |strategy, layout| {
        let config = Config::new()
            .strategy(strategy)
            .layout(layout)
            .ignore_environment();
        match JitMemory::new(config) {
            Ok(memory) => Ok(Box::new(JitmemPeer::new(memory)) as Box<dyn Peer>),
            Err(Error::Unsupported { reason, .. }) => Err(MakeError::Unavailable(reason)),
            Err(e) => Err(MakeError::Failed(e.to_string())),
        }
    };
    match name {
        "jitmem-mirror" => jitmem(Strategy::Mirror, Layout::Pooled),
        "jitmem-mirror-arena" => jitmem(Strategy::Mirror, Layout::Arena { size: 256 << 20 }),
        "jitmem-toggle" => jitmem(Strategy::Toggle, Layout::Pooled),
        "jitmem-toggle-peralloc" => jitmem(Strategy::Toggle, Layout::PerAllocation),
        "jitmem-perthread" => jitmem(Strategy::PerThread, Layout::Pooled),
        "jit-allocator" => Ok(Box::new(jit_allocator_peer())),
        "region" => Ok(Box::new(RegionPeer::default())),
        "memmap2" => Ok(Box::new(MemmapPeer::default())),
        "dynasmrt" => Ok(Box::new(DynasmPeer::default())),
        "asmjit-rwx" => asmjit::make(false),
        "asmjit-dual" => asmjit::make(true),
        "floor" => Ok(Box::new(FloorPeer::new()?)),
        "mprotect-floor" => Ok(Box::new(MprotectFloorPeer::default())),
        _ => Err(MakeError::Failed(format!("no peer called {name:?}"))),
    }
}

/// A table of live blocks indexed by [`Handle`], reusing freed slots.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> Handle {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(value);
                i
            }
            None => {
                self.items.push(Some(value));
                self.items.len() - 1
            }
        }
    }

    fn get(&self, h: Handle) -> &T {
        self.items[h].as_ref().expect("handle of a live block")
    }

    fn get_mut(&mut self, h: Handle) -> &mut T {
        self.items[h].as_mut().expect("handle of a live block")
    }

    fn remove(&mut self, h: Handle) -> T {
        let value = self.items[h].take().expect("handle of a live block");
        self.free.push(h);
        value
    }

    /// Grows both tables to hold `n` more entries and touches their memory.
    fn reserve(&mut self, n: usize) {
        let (items, free) = (self.items.len(), self.free.len());
        self.items.extend((0..n).map(|_| None));
        self.free.extend(0..n);
        std::hint::black_box((&self.items, &self.free));
        self.items.truncate(items);
        self.free.truncate(free);
    }
}

fn describe(e: impl fmt::Display) -> String {
    e.to_string()
}

/// `what` and the OS error of the call that just failed.
fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Refuses a write of `n` bytes at `offset` that would not fit in a block of `len` bytes.
fn check_range(offset: usize, n: usize, len: usize) -> Result<(), String> {
    match offset.checked_add(n) {
        Some(end) if end <= len => Ok(()),
        _ => Err(format!("write past the block ({offset}+{n} > {len})")),
    }
}

/// `free` and `reserve` of a peer whose blocks are a [`Slab`] in `self.blocks` whose values
/// release themselves on drop.
macro_rules! slab_free_reserve {
    () => {
        fn free(&mut self, h: Handle) -> Result<(), String> {
            drop(self.blocks.remove(h));
            Ok(())
        }

        fn reserve(&mut self, n: usize) {
            self.blocks.reserve(n);
        }
    };
}

/// jitmem, in any strategy and layout.
struct JitmemPeer {
    memory: JitMemory,
    blocks: Slab<CodeBlock>,
}

impl JitmemPeer {
    fn new(memory: JitMemory) -> Self {
        JitmemPeer {
            memory,
            blocks: Slab::default(),
        }
    }
}

impl Peer for JitmemPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let block = self.memory.allocate(len).map_err(describe)?;
        Ok(self.blocks.insert(block))
    }

    fn addr(&self, h: Handle) -> usize {
        self.blocks.get(h).as_ptr() as usize
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        publish: Publish,
    ) -> Result<(), String> {
        let block = self.blocks.get_mut(h);
        if publish == Publish::Atomic {
            let stored = if cfg!(target_arch = "x86_64") {
                block.patch_live(offset, bytes)
            } else {
                block.patch_live_data(offset, bytes)
            };
            match stored {
                Err(Error::NotLivePatchable { .. }) => {}
                other => return other.map_err(describe),
            }
        }
        let mut scope = block
            .write_range(offset..offset + bytes.len())
            .map_err(describe)?;
        scope.copy_from_slice(bytes);
        match publish {
            Publish::Local | Publish::Atomic => scope.publish(),
            Publish::Live => scope.publish_live(),
        }
        .map_err(describe)
    }

    unsafe fn function(&self, h: Handle) -> Result<Fn0, String> {
        // SAFETY: forwarded from the caller: the block holds a published function of this type.
        unsafe { self.blocks.get(h).entry::<Fn0>(0) }.map_err(describe)
    }

    slab_free_reserve!();

    fn thread_maker(&self) -> PeerMaker {
        let memory = self.memory.clone();
        Box::new(move || Ok(Box::new(JitmemPeer::new(memory)) as Box<dyn Peer>))
    }
}

/// An allocator that hands out each block as an executable and a writable address (the same
/// address without dual mapping): jit-allocator and the C++ asmjit `JitAllocator`.
trait RxRwAllocator: Sized + 'static {
    /// Allocates `len` bytes: `(rx, rw)`.
    fn alloc(&mut self, len: usize) -> Result<(usize, usize), String>;

    /// Releases the block at `rx`.
    ///
    /// # Safety
    /// `rx` came from this allocator's [`alloc`](RxRwAllocator::alloc) and is released once.
    unsafe fn release(&mut self, rx: usize) -> Result<(), String>;

    /// Copies `bytes` to `rw + offset` and makes them visible to instruction fetch at
    /// `rx + offset`.
    ///
    /// # Safety
    /// `[offset, + bytes.len())` lies inside a live block whose addresses are `rx` and `rw`.
    unsafe fn write(&mut self, rx: usize, rw: usize, offset: usize, bytes: &[u8]);

    /// Makes, on another thread, the allocator of that thread's peer.
    fn for_thread(&self) -> Box<dyn FnOnce() -> Result<Self, String> + Send>;
}

/// A [`Peer`] over an [`RxRwAllocator`].
struct RxRwPeer<A> {
    allocator: A,
    /// `(rx, rw, len)` of each live block, as addresses.
    blocks: Slab<(usize, usize, usize)>,
}

impl<A> RxRwPeer<A> {
    fn new(allocator: A) -> Self {
        RxRwPeer {
            allocator,
            blocks: Slab::default(),
        }
    }
}

impl<A: RxRwAllocator> Peer for RxRwPeer<A> {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let (rx, rw) = self.allocator.alloc(len)?;
        Ok(self.blocks.insert((rx, rw, len)))
    }

    fn addr(&self, h: Handle) -> usize {
        self.blocks.get(h).0
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let (rx, rw, len) = *self.blocks.get(h);
        check_range(offset, bytes.len(), len)?;
        // SAFETY: the range lies inside the live block (checked above).
        unsafe { self.allocator.write(rx, rw, offset, bytes) };
        Ok(())
    }

    fn free(&mut self, h: Handle) -> Result<(), String> {
        let (rx, _, _) = self.blocks.remove(h);
        // SAFETY: `rx` was returned by this allocator's `alloc` and is released once (its slot
        // is gone from the table).
        unsafe { self.allocator.release(rx) }
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

    fn thread_maker(&self) -> PeerMaker {
        let make = self.allocator.for_thread();
        Box::new(move || Ok(Box::new(RxRwPeer::new(make()?)) as Box<dyn Peer>))
    }
}

/// jit-allocator: a port of asmjit's JitAllocator (dual-mapped pools, bitmap allocation); one
/// per thread (it is not Sync).
fn jit_allocator_peer() -> RxRwPeer<Box<jit_allocator::JitAllocator>> {
    RxRwPeer::new(jit_allocator::JitAllocator::new(Default::default()))
}

impl RxRwAllocator for Box<jit_allocator::JitAllocator> {
    fn alloc(&mut self, len: usize) -> Result<(usize, usize), String> {
        let (rx, rw) = jit_allocator::JitAllocator::alloc(self, len)
            .map_err(|e| format!("JitAllocator::alloc({len}): {e:?}"))?;
        Ok((rx as usize, rw as usize))
    }

    unsafe fn release(&mut self, rx: usize) -> Result<(), String> {
        // SAFETY: forwarded from the caller.
        unsafe { jit_allocator::JitAllocator::release(self, rx as *const u8) }
            .map_err(|e| format!("JitAllocator::release: {e:?}"))
    }

    unsafe fn write(&mut self, rx: usize, rw: usize, offset: usize, bytes: &[u8]) {
        // As the crate's documentation says: RW access (a no-op but on macOS AArch64), copy
        // through the RW view, RX access back, flush the instruction cache of the RX range.
        jit_allocator::protect_jit_memory(jit_allocator::ProtectJitAccess::ReadWrite);
        // SAFETY: [rw + offset, + bytes.len()) lies inside the live allocation's writable view
        // (the caller's promise), which does not overlap `bytes` (a Rust slice elsewhere).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (rw as *mut u8).add(offset), bytes.len());
        }
        jit_allocator::protect_jit_memory(jit_allocator::ProtectJitAccess::ReadExecute);
        jit_allocator::flush_instruction_cache((rx + offset) as *const u8, bytes.len());
    }

    fn for_thread(&self) -> Box<dyn FnOnce() -> Result<Self, String> + Send> {
        Box::new(|| Ok(jit_allocator::JitAllocator::new(Default::default())))
    }
}

/// region: one `region::alloc` mapping per function, `region::protect` RW <-> RX.
#[derive(Default)]
struct RegionPeer {
    /// Each live block, and whether it is currently writable.
    blocks: Slab<(region::Allocation, bool)>,
}

impl Peer for RegionPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let allocation = region::alloc(len, region::Protection::READ_WRITE).map_err(describe)?;
        Ok(self.blocks.insert((allocation, true)))
    }

    fn addr(&self, h: Handle) -> usize {
        self.blocks.get(h).0.as_ptr::<u8>() as usize
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let (allocation, writable) = self.blocks.get_mut(h);
        let len = allocation.len();
        check_range(offset, bytes.len(), len)?;
        let base = allocation.as_mut_ptr::<u8>();
        if !*writable {
            // SAFETY: the range is this allocation's own mapping; no Rust reference points
            // into it.
            unsafe { region::protect(base, len, region::Protection::READ_WRITE) }
                .map_err(describe)?;
            *writable = true;
        }
        // SAFETY: the mapping is read-write now and [offset, + bytes.len()) lies inside it.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(offset), bytes.len()) };
        // SAFETY: as above; making our own mapping executable.
        unsafe { region::protect(base, len, region::Protection::READ_EXECUTE) }
            .map_err(describe)?;
        *writable = false;
        // SAFETY: the range is mapped and readable.
        unsafe { jitmem::icache::clear_cache(base.add(offset), bytes.len()) };
        Ok(())
    }

    slab_free_reserve!();

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(RegionPeer::default()) as Box<dyn Peer>))
    }
}

/// A memmap2 mapping in one of its two states.
enum MapState {
    Writable(memmap2::MmapMut),
    Executable(memmap2::Mmap),
}

/// memmap2: `MmapMut::map_anon` per function, `make_exec` / `make_mut` around writes.
#[derive(Default)]
struct MemmapPeer {
    blocks: Slab<Option<MapState>>,
}

impl Peer for MemmapPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let map = memmap2::MmapMut::map_anon(len).map_err(describe)?;
        Ok(self.blocks.insert(Some(MapState::Writable(map))))
    }

    fn addr(&self, h: Handle) -> usize {
        match self.blocks.get(h) {
            Some(MapState::Writable(m)) => m.as_ptr() as usize,
            Some(MapState::Executable(m)) => m.as_ptr() as usize,
            None => 0,
        }
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let slot = self.blocks.get_mut(h);
        let mut map = match slot.take() {
            Some(MapState::Writable(m)) => m,
            Some(MapState::Executable(m)) => m.make_mut().map_err(describe)?,
            None => return Err("mapping lost by an earlier failed write".into()),
        };
        let target = map
            .get_mut(offset..offset + bytes.len())
            .ok_or("write past the block")?;
        target.copy_from_slice(bytes);
        let map = map.make_exec().map_err(describe)?;
        // SAFETY: the range is mapped and readable.
        unsafe { jitmem::icache::clear_cache(map.as_ptr().add(offset), bytes.len()) };
        *slot = Some(MapState::Executable(map));
        Ok(())
    }

    slab_free_reserve!();

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(MemmapPeer::default()) as Box<dyn Peer>))
    }
}

/// A dynasmrt buffer in one of its two states.
enum DynState {
    Writable(dynasmrt::mmap::MutableBuffer),
    Executable(dynasmrt::ExecutableBuffer),
}

/// dynasmrt: one `MutableBuffer` per function, `make_exec` / `make_mut` around writes.
#[derive(Default)]
struct DynasmPeer {
    blocks: Slab<Option<DynState>>,
}

impl Peer for DynasmPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let mut buffer = dynasmrt::mmap::MutableBuffer::new(len).map_err(describe)?;
        buffer.set_len(len);
        Ok(self.blocks.insert(Some(DynState::Writable(buffer))))
    }

    fn addr(&self, h: Handle) -> usize {
        match self.blocks.get(h) {
            Some(DynState::Writable(b)) => b.as_ptr() as usize,
            Some(DynState::Executable(b)) => b.as_ptr() as usize,
            None => 0,
        }
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let slot = self.blocks.get_mut(h);
        let mut buffer = match slot.take() {
            Some(DynState::Writable(b)) => b,
            Some(DynState::Executable(b)) => b.make_mut().map_err(describe)?,
            None => return Err("buffer lost by an earlier failed write".into()),
        };
        let target = buffer
            .get_mut(offset..offset + bytes.len())
            .ok_or("write past the block")?;
        target.copy_from_slice(bytes);
        let buffer = buffer.make_exec().map_err(describe)?;
        dynasmrt::cache_control::synchronize_icache(&buffer[offset..offset + bytes.len()]);
        *slot = Some(DynState::Executable(buffer));
        Ok(())
    }

    slab_free_reserve!();

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(DynasmPeer::default()) as Box<dyn Peer>))
    }
}

/// The C++ asmjit `JitAllocator` (`cpp/asmjit_peer.cpp`), RWX (`asmjit-rwx`) or dual-mapped
/// (`asmjit-dual`, `JitAllocatorOptions::kUseDualMapping`).
mod asmjit {
    use super::{MakeError, Peer};

    /// Creates the peer; unavailable when the build found no asmjit.
    #[cfg(jb_asmjit)]
    pub fn make(dual: bool) -> Result<Box<dyn Peer>, MakeError> {
        let allocator = imp::Allocator::new(dual).map_err(MakeError::Failed)?;
        Ok(Box::new(super::RxRwPeer::new(std::sync::Arc::new(
            allocator,
        ))))
    }

    /// Creates the peer; unavailable when the build found no asmjit.
    #[cfg(not(jb_asmjit))]
    pub fn make(_dual: bool) -> Result<Box<dyn Peer>, MakeError> {
        Err(MakeError::Unavailable(
            env!("JB_ASMJIT_UNAVAILABLE").to_string(),
        ))
    }

    #[cfg(jb_asmjit)]
    mod imp {
        use std::ffi::{CStr, c_char, c_int, c_void};
        use std::ptr::NonNull;
        use std::sync::Arc;

        use super::super::RxRwAllocator;

        // The shim's C ABI (cpp/asmjit_peer.cpp).
        unsafe extern "C" {
            fn jb_asmjit_new(dual: c_int) -> *mut c_void;
            fn jb_asmjit_delete(allocator: *mut c_void);
            fn jb_asmjit_alloc(
                allocator: *mut c_void,
                size: usize,
                rx: *mut *mut c_void,
                rw: *mut *mut c_void,
            ) -> u32;
            fn jb_asmjit_release(allocator: *mut c_void, rx: *mut c_void) -> u32;
            fn jb_asmjit_write(
                rx: *mut c_void,
                rw: *mut c_void,
                offset: usize,
                bytes: *const c_void,
                len: usize,
            );
            fn jb_asmjit_error(error: u32) -> *const c_char;
        }

        /// asmjit's name for an error code.
        fn error(what: &str, code: u32) -> String {
            // SAFETY: errorAsString returns a static NUL-terminated string for any code.
            let name = unsafe { CStr::from_ptr(jb_asmjit_error(code)) };
            format!("{what}: asmjit error {code} ({})", name.to_string_lossy())
        }

        /// One `asmjit::JitAllocator`, deleted on drop.
        pub struct Allocator(NonNull<c_void>);

        // SAFETY: asmjit's JitAllocator takes its own lock in alloc, release, shrink, query and
        // statistics (in Debian's libasmjit.a each of them calls pthread_mutex_lock; later
        // headers document them as thread-safe), so one allocator may be used from several
        // threads at once; nothing in it is tied to the thread that made it.
        unsafe impl Send for Allocator {}
        // SAFETY: as for Send: every call through a shared reference is serialised by asmjit.
        unsafe impl Sync for Allocator {}

        impl Allocator {
            pub fn new(dual: bool) -> Result<Self, String> {
                // SAFETY: the shim constructs a JitAllocator (or returns null when out of memory).
                let raw = unsafe { jb_asmjit_new(c_int::from(dual)) };
                NonNull::new(raw)
                    .map(Allocator)
                    .ok_or_else(|| "cannot create a JitAllocator".to_string())
            }
        }

        impl Drop for Allocator {
            fn drop(&mut self) {
                // SAFETY: made by jb_asmjit_new, deleted once (the last Arc is gone).
                unsafe { jb_asmjit_delete(self.0.as_ptr()) }
            }
        }

        /// One allocator shared by every thread's peer (it is thread-safe).
        impl RxRwAllocator for Arc<Allocator> {
            fn alloc(&mut self, len: usize) -> Result<(usize, usize), String> {
                let (mut rx, mut rw) = (std::ptr::null_mut(), std::ptr::null_mut());
                // SAFETY: a live allocator; the out-pointers are valid locals.
                let code = unsafe { jb_asmjit_alloc(self.0.as_ptr(), len, &mut rx, &mut rw) };
                if code != 0 {
                    return Err(error(&format!("JitAllocator::alloc({len})"), code));
                }
                if rw.is_null() {
                    // SAFETY: `rx` was just allocated here and is released once.
                    unsafe { jb_asmjit_release(self.0.as_ptr(), rx) };
                    return Err("JitAllocator gave no writable address".into());
                }
                Ok((rx as usize, rw as usize))
            }

            unsafe fn release(&mut self, rx: usize) -> Result<(), String> {
                // SAFETY: `rx` came from this allocator's alloc and is released once (the
                // caller's promise).
                let code = unsafe { jb_asmjit_release(self.0.as_ptr(), rx as *mut c_void) };
                if code != 0 {
                    return Err(error("JitAllocator::release", code));
                }
                Ok(())
            }

            unsafe fn write(&mut self, rx: usize, rw: usize, offset: usize, bytes: &[u8]) {
                // SAFETY: [offset, + bytes.len()) lies inside a live block whose writable view
                // is `rw` (the caller's promise); `bytes` is a Rust slice elsewhere. The shim
                // copies through `rw` and flushes the instruction cache of the `rx` range.
                unsafe {
                    jb_asmjit_write(
                        rx as *mut c_void,
                        rw as *mut c_void,
                        offset,
                        bytes.as_ptr().cast(),
                        bytes.len(),
                    )
                };
            }

            fn for_thread(&self) -> Box<dyn FnOnce() -> Result<Self, String> + Send> {
                let shared = Arc::clone(self);
                Box::new(move || Ok(shared))
            }
        }
    }
}

/// The floor's region: 1 GiB of address space (backed only where touched).
const FLOOR_REGION: usize = 1 << 30;

/// Allocation granule of the floor, and the width of its size classes.
const FLOOR_GRANULE: usize = 16;

/// The floor: the least a pooled W^X allocator can do. One region mapped twice (a memfd, an RW
/// view and an RX view), a bump pointer, and a LIFO free list per exact 16-byte size class; no
/// lock (one per thread), no trap fill, no double-free or overlap checks, no returning memory.
/// Writes go through the RW view, then the RX range's instruction cache is flushed.
pub struct FloorPeer {
    rw: *mut u8,
    rx: *mut u8,
    /// The next unallocated offset.
    top: usize,
    /// Offsets of free blocks, by size class (`len.div_ceil(16)`).
    free: Vec<Vec<usize>>,
    /// `(offset, class)` of each live block.
    blocks: Slab<(usize, usize)>,
}

impl FloorPeer {
    /// Maps the region twice.
    pub fn new() -> Result<Self, MakeError> {
        let fd = anonymous_file()?;
        let len =
            libc::off_t::try_from(FLOOR_REGION).map_err(|e| MakeError::Failed(describe(e)))?;
        // SAFETY: ftruncate on a file descriptor we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len) } != 0 {
            return Err(MakeError::Failed(os_error("ftruncate")));
        }
        let rw = map_shared(&fd, libc::PROT_READ | libc::PROT_WRITE)?;
        let rx = match map_shared(&fd, libc::PROT_READ | libc::PROT_EXEC) {
            Ok(rx) => rx,
            Err(e) => {
                // SAFETY: `rw` is the mapping of FLOOR_REGION bytes just made, used by nothing.
                unsafe { libc::munmap(rw.cast(), FLOOR_REGION) };
                return Err(e);
            }
        };
        Ok(FloorPeer {
            rw,
            rx,
            top: 0,
            free: Vec::new(),
            blocks: Slab::default(),
        })
    }
}

/// A memfd of the floor's region (Linux; elsewhere the floor is unavailable).
fn anonymous_file() -> Result<OwnedFd, MakeError> {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        // SAFETY: a NUL-terminated name and valid flags; the result is checked below.
        let fd = unsafe { libc::memfd_create(c"jitmem-bench-floor".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MakeError::Failed(os_error("memfd_create")));
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    {
        Err(MakeError::Unavailable(
            "the floor needs memfd_create".into(),
        ))
    }
}

/// A shared mapping of the whole floor region of `fd`.
fn map_shared(fd: &OwnedFd, prot: libc::c_int) -> Result<*mut u8, MakeError> {
    // SAFETY: a new mapping chosen by the kernel, of a file we own that is FLOOR_REGION long.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FLOOR_REGION,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(MakeError::Failed(os_error("mmap")));
    }
    Ok(p.cast())
}

impl Drop for FloorPeer {
    fn drop(&mut self) {
        // SAFETY: the two mappings made by `new`; no function in them runs any more (the
        // workloads free or abandon their blocks before the peer goes).
        unsafe {
            libc::munmap(self.rw.cast(), FLOOR_REGION);
            libc::munmap(self.rx.cast(), FLOOR_REGION);
        }
    }
}

impl Peer for FloorPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let class = len.div_ceil(FLOOR_GRANULE).max(1);
        let offset = match self.free.get_mut(class).and_then(Vec::pop) {
            Some(offset) => offset,
            None => {
                let offset = self.top;
                let end = offset + class * FLOOR_GRANULE;
                if end > FLOOR_REGION {
                    return Err(format!("the floor's {FLOOR_REGION}-byte region is full"));
                }
                self.top = end;
                offset
            }
        };
        Ok(self.blocks.insert((offset, class)))
    }

    fn addr(&self, h: Handle) -> usize {
        self.rx as usize + self.blocks.get(h).0
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let (start, class) = *self.blocks.get(h);
        // The one check kept: `write` is a safe function.
        check_range(offset, bytes.len(), class * FLOOR_GRANULE)?;
        let at = start + offset;
        // SAFETY: [at, + bytes.len()) lies inside a live block of the region (checked above),
        // written through the RW view; `bytes` is a Rust slice elsewhere.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.rw.add(at), bytes.len()) };
        // SAFETY: the RX view of the same range is mapped and readable.
        unsafe { jitmem::icache::clear_cache(self.rx.add(at), bytes.len()) };
        Ok(())
    }

    fn free(&mut self, h: Handle) -> Result<(), String> {
        let (offset, class) = self.blocks.remove(h);
        if self.free.len() <= class {
            self.free.resize_with(class + 1, Vec::new);
        }
        self.free[class].push(offset);
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| {
            FloorPeer::new()
                .map(|p| Box::new(p) as Box<dyn Peer>)
                .map_err(|e| e.to_string())
        })
    }
}

/// One mapping of [`MprotectFloorPeer`], unmapped on drop.
struct Mapping {
    base: *mut u8,
    /// The mapped length: the block's length rounded up to pages.
    len: usize,
    /// Still read-write since its mmap (never made executable yet).
    fresh: bool,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes; the block is freed, nothing runs in it.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Toggle's floor: what region and memmap2 do without their overheads. One anonymous mapping
/// per function (mmap RW); each write makes the pages it touches RW with a raw `mprotect`,
/// copies, makes them RX again (the whole mapping after its first write) and flushes the
/// instruction cache.
#[derive(Default)]
pub struct MprotectFloorPeer {
    blocks: Slab<Mapping>,
}

/// `mprotect` of `[base + from, base + to)`.
///
/// # Safety
/// The range lies inside a mapping that the caller owns and that no Rust reference points into.
unsafe fn protect(base: *mut u8, from: usize, to: usize, prot: libc::c_int) -> Result<(), String> {
    // SAFETY: forwarded from the caller.
    if unsafe { libc::mprotect(base.add(from).cast(), to - from, prot) } == 0 {
        Ok(())
    } else {
        Err(os_error("mprotect"))
    }
}

impl Peer for MprotectFloorPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let len = len.max(1).next_multiple_of(jitmem::page_size());
        // SAFETY: a new private anonymous mapping chosen by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os_error("mmap"));
        }
        Ok(self.blocks.insert(Mapping {
            base: p.cast(),
            len,
            fresh: true,
        }))
    }

    fn addr(&self, h: Handle) -> usize {
        self.blocks.get(h).base as usize
    }

    fn write(
        &mut self,
        h: Handle,
        offset: usize,
        bytes: &[u8],
        _publish: Publish,
    ) -> Result<(), String> {
        let map = self.blocks.get_mut(h);
        check_range(offset, bytes.len(), map.len)?;
        let page = jitmem::page_size();
        let (from, to) = if map.fresh {
            (0, map.len)
        } else {
            let from = offset / page * page;
            let to = (offset + bytes.len())
                .next_multiple_of(page)
                .max(from + page);
            // SAFETY: whole pages of our own mapping; no Rust reference points into it.
            unsafe { protect(map.base, from, to, libc::PROT_READ | libc::PROT_WRITE) }?;
            (from, to)
        };
        // SAFETY: the range is read-write now and lies inside the mapping (checked above).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), map.base.add(offset), bytes.len()) };
        // SAFETY: as above.
        unsafe { protect(map.base, from, to, libc::PROT_READ | libc::PROT_EXEC) }?;
        map.fresh = false;
        // SAFETY: the range is mapped and readable.
        unsafe { jitmem::icache::clear_cache(map.base.add(offset), bytes.len()) };
        Ok(())
    }

    slab_free_reserve!();

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(MprotectFloorPeer::default()) as Box<dyn Peer>))
    }
}
