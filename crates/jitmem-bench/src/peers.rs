//! The allocators compared: jitmem in four configurations and its Rust peers, each behind the
//! [`Peer`] trait.
//!
//! Left out: **cranelift-jit**'s memory providers (`SystemMemoryProvider`,
//! `ArenaMemoryProvider`, checked in 0.135). Their public `JITMemoryProvider` trait can be used
//! without a `JITModule`, but it is a bump allocator for a whole module: `allocate` hands out
//! memory, `finalize` makes *everything allocated so far* read-execute, and `free_memory` frees
//! *everything*. There is no way to free one function (so `alloc_free`, `churn`, `threads` and
//! the fragmented variant cannot be expressed) nor to make finalized code writable again (so
//! `patch` and `race` cannot either). Its signatures also name `cranelift_module::ModuleResult`,
//! which pulls in `cranelift-codegen`, the largest crate of the Cranelift tree, for an allocator
//! that could fill one column of seven (`overhead`).

use std::fmt;

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
pub const PEERS: [PeerInfo; 9] = [
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
];

/// The resolved version of a peer crate, as recorded by the build script.
pub fn version(name: &str) -> Option<&'static str> {
    match name {
        "jit-allocator" => Some(env!("JB_VERSION_JIT_ALLOCATOR")),
        "region" => Some(env!("JB_VERSION_REGION")),
        "memmap2" => Some(env!("JB_VERSION_MEMMAP2")),
        "dynasmrt" => Some(env!("JB_VERSION_DYNASMRT")),
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
        "jit-allocator" => Ok(Box::new(JitAllocatorPeer::new())),
        "region" => Ok(Box::new(RegionPeer::default())),
        "memmap2" => Ok(Box::new(MemmapPeer::default())),
        "dynasmrt" => Ok(Box::new(DynasmPeer::default())),
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
        let mut scope = block
            .write_range(offset..offset + bytes.len())
            .map_err(describe)?;
        scope.copy_from_slice(bytes);
        match publish {
            Publish::Local => scope.publish(),
            Publish::Live => scope.publish_live(),
        }
        .map_err(describe)
    }

    unsafe fn function(&self, h: Handle) -> Result<Fn0, String> {
        // SAFETY: forwarded from the caller: the block holds a published function of this type.
        unsafe { self.blocks.get(h).entry::<Fn0>(0) }.map_err(describe)
    }

    fn free(&mut self, h: Handle) -> Result<(), String> {
        drop(self.blocks.remove(h));
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

    fn thread_maker(&self) -> PeerMaker {
        let memory = self.memory.clone();
        Box::new(move || Ok(Box::new(JitmemPeer::new(memory)) as Box<dyn Peer>))
    }
}

/// jit-allocator: a port of asmjit's JitAllocator (dual-mapped pools, bitmap allocation).
struct JitAllocatorPeer {
    allocator: Box<jit_allocator::JitAllocator>,
    /// `(rx, rw, len)` of each live block, as addresses.
    blocks: Slab<(usize, usize, usize)>,
}

impl JitAllocatorPeer {
    fn new() -> Self {
        JitAllocatorPeer {
            allocator: jit_allocator::JitAllocator::new(Default::default()),
            blocks: Slab::default(),
        }
    }
}

impl Peer for JitAllocatorPeer {
    fn alloc(&mut self, len: usize) -> Result<Handle, String> {
        let (rx, rw) = self
            .allocator
            .alloc(len)
            .map_err(|e| format!("JitAllocator::alloc({len}): {e:?}"))?;
        Ok(self.blocks.insert((rx as usize, rw as usize, len)))
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
        if offset + bytes.len() > len {
            return Err(format!(
                "write past the block ({offset}+{} > {len})",
                bytes.len()
            ));
        }
        // As the crate's documentation says: RW access (a no-op but on macOS AArch64), copy
        // through the RW view, RX access back, flush the instruction cache of the RX range.
        jit_allocator::protect_jit_memory(jit_allocator::ProtectJitAccess::ReadWrite);
        // SAFETY: [rw + offset, + bytes.len()) lies inside the live allocation's writable view
        // (checked above), which does not overlap `bytes` (a Rust slice elsewhere).
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), (rw as *mut u8).add(offset), bytes.len());
        }
        jit_allocator::protect_jit_memory(jit_allocator::ProtectJitAccess::ReadExecute);
        jit_allocator::flush_instruction_cache((rx + offset) as *const u8, bytes.len());
        Ok(())
    }

    fn free(&mut self, h: Handle) -> Result<(), String> {
        let (rx, _, _) = self.blocks.remove(h);
        // SAFETY: `rx` was returned by this allocator's `alloc` and is released once (its slot
        // is gone from the table).
        unsafe { self.allocator.release(rx as *const u8) }
            .map_err(|e| format!("JitAllocator::release: {e:?}"))
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(JitAllocatorPeer::new()) as Box<dyn Peer>))
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
        if offset + bytes.len() > len {
            return Err(format!(
                "write past the block ({offset}+{} > {len})",
                bytes.len()
            ));
        }
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

    fn free(&mut self, h: Handle) -> Result<(), String> {
        drop(self.blocks.remove(h));
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

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

    fn free(&mut self, h: Handle) -> Result<(), String> {
        drop(self.blocks.remove(h));
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

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

    fn free(&mut self, h: Handle) -> Result<(), String> {
        drop(self.blocks.remove(h));
        Ok(())
    }

    fn reserve(&mut self, n: usize) {
        self.blocks.reserve(n);
    }

    fn thread_maker(&self) -> PeerMaker {
        Box::new(|| Ok(Box::new(DynasmPeer::default()) as Box<dyn Peer>))
    }
}
