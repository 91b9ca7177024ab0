// The C++ asmjit JitAllocator behind a C ABI, for jitmem-bench's `asmjit-rwx` and `asmjit-dual`
// peers (src/peers.rs). Compiled by build.rs only when asmjit's headers and library are found.
//
// Written against asmjit 1.9 (Debian's libasmjit-dev 0.0~git20221210): `JitAllocator::CreateParams`,
// `alloc(void** rx, void** rw, size_t)`, `release(void* rx)`, and
// `VirtMem::ProtectJitReadWriteScope` (RW access before the write, RX access and an instruction
// cache flush after it; the access switch is a no-op except on Apple AArch64). Later asmjit
// versions moved to `alloc(Span&, size_t)` and keep this `alloc` as a deprecated inline wrapper
// around it; a null RW address (a Span that only JitAllocator::write may fill) is refused by the
// Rust side.

#include <asmjit/core.h>

#include <cstdint>
#include <cstring>
#include <new>

using asmjit::JitAllocator;
using asmjit::JitAllocatorOptions;

extern "C" {

// asmjit's version, ASMJIT_LIBRARY_VERSION (0xMMmmpp).
uint32_t jb_asmjit_version(void) { return ASMJIT_LIBRARY_VERSION; }

// A new JitAllocator with default block size and granularity; `dual` != 0 sets
// kUseDualMapping (an RX view and an RW view of the same memory), otherwise the memory is RWX.
// Null if out of memory.
void* jb_asmjit_new(int dual) {
  JitAllocator::CreateParams params{};
  params.options = dual ? JitAllocatorOptions::kUseDualMapping : JitAllocatorOptions::kNone;
  return new (std::nothrow) JitAllocator(&params);
}

// Destroys the allocator and every block it holds.
void jb_asmjit_delete(void* allocator) { delete static_cast<JitAllocator*>(allocator); }

// Allocates `size` bytes: the executable address in `*rx`, the writable one in `*rw` (the same
// address without dual mapping). Returns asmjit's error code, 0 on success.
uint32_t jb_asmjit_alloc(void* allocator, size_t size, void** rx, void** rw) {
  return static_cast<JitAllocator*>(allocator)->alloc(rx, rw, size);
}

// Releases the block whose executable address is `rx`. Returns asmjit's error code.
uint32_t jb_asmjit_release(void* allocator, void* rx) {
  return static_cast<JitAllocator*>(allocator)->release(rx);
}

// Copies `len` bytes to `rw + offset` inside a ProtectJitReadWriteScope over `rx + offset`,
// whose end flushes the instruction cache of that range.
void jb_asmjit_write(void* rx, void* rw, size_t offset, const void* bytes, size_t len) {
  asmjit::VirtMem::ProtectJitReadWriteScope scope(static_cast<uint8_t*>(rx) + offset, len);
  std::memcpy(static_cast<uint8_t*>(rw) + offset, bytes, len);
}

// asmjit's name for an error code.
const char* jb_asmjit_error(uint32_t error) { return asmjit::DebugUtils::errorAsString(error); }

}  // extern "C"
