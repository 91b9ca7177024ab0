//! The library half of `jitmem-bench`: the peers (executable-memory allocators behind one
//! [`Peer`](peers::Peer) trait: jitmem, its Rust peers, the C++ asmjit `JitAllocator` and two
//! floors), the workloads that drive them, and facts about the machine. The binary
//! (`src/main.rs`) runs each (peer, workload) in a child process and prints the table; the
//! criterion bench `benches/peers.rs` times the peers' hot paths side by side.

pub mod machine;
pub mod peers;
pub mod workloads;
