/* Seed 000's CodeGen API (Play!-CodeGen's MemoryUtil.h), implemented by jitmem on every
 * platform jitmem supports. A C++ file written against the seed's MemoryUtil.h compiles and
 * links against jitmem with no other change; no TARGET_OS_IOS guard is needed.
 *
 * Modes: Legacy = Toggle + PerAllocation (write in place between
 * JITPageWriteEnableExecuteDisable and JITPageWriteDisableExecuteEnable), LuckNoTXM = Mirror +
 * PerAllocation, LuckTXM = Mirror + a 512 MiB arena (write through ptr + diff).
 *
 * Differences from the seed, all fixes:
 *  - every call that can fail says so: functions the seed declared void return bool (callers
 *    that ignore it compile unchanged), and the reason is in CodeGen::LastError();
 *  - AllocateWritableRegionAndGetDiff returns JITMEM_DIFF_ERROR (PTRDIFF_MIN) on failure,
 *    since 0 is a valid answer in Legacy mode;
 *  - allocating before SetJitType / AllocateExecutableMemoryRegion works (LuckTXM, the seed's
 *    default, is set up on first use);
 *  - SetJitType is refused while allocations of another mode are live;
 *  - foreign pointers, double frees, wrong sizes and unbalanced write toggles are errors, never
 *    crashes;
 *  - written code is made coherent for instruction fetch (needed on AArch64 and iOS) in every
 *    mode by JITPageWriteDisableExecuteEnable (the mirror modes: the whole allocation),
 *    FreeWritableRegion (its range) and FlushInstructionCache (new: the seed had no flush).
 *    Code written through ptr + diff and run before FreeWritableRegion (the seed's
 *    CompileBlock) needs FlushInstructionCache or a JITPageWriteDisableExecuteEnable first. */
#ifndef JITMEM_MEMORYUTIL_H
#define JITMEM_MEMORYUTIL_H

#include <cstddef>
#include <cstdint>

#include "jitmem.h"

namespace CodeGen
{

/// The three JIT modes of seed 000.
enum class JitType
{
	Legacy,    ///< W^X toggled with mprotect (iOS < 26 in the seed)
	LuckNoTXM, ///< an RW mirror of each RX allocation (iOS 26 without TXM)
	LuckTXM    ///< one big region with a permanent RW mirror (iOS 26 with TXM)
};

/// What AllocateWritableRegionAndGetDiff returns on failure.
constexpr ptrdiff_t WritableDiffError = JITMEM_DIFF_ERROR;

/// The reason the last failed call on this thread failed ("" after a success).
inline const char* LastError()
{
	return jitmem_last_error();
}

/// Chooses the mode. Refused while allocations of another mode are live.
inline bool SetJitType(JitType type)
{
	return jitmem_codegen_set_jit_type(static_cast<uint32_t>(type)) == JITMEM_STATUS_OK;
}

/// Allocates executable memory (page-aligned); nullptr on failure (see LastError()).
inline void* AllocateExecutableMemory(size_t size)
{
	return jitmem_codegen_allocate(size);
}

/// Frees memory from AllocateExecutableMemory; size must be the size allocated.
inline bool FreeExecutableMemory(void* ptr, size_t size)
{
	return jitmem_codegen_free(ptr, size) == JITMEM_STATUS_OK;
}

/// Sets up the current mode now (LuckTXM: reserves the region). Optional.
inline bool AllocateExecutableMemoryRegion()
{
	return jitmem_codegen_allocate_region() == JITMEM_STATUS_OK;
}

/// The offset to add to rx_ptr to write its code (0 in Legacy mode); WritableDiffError on
/// failure.
inline ptrdiff_t AllocateWritableRegionAndGetDiff(void* rx_ptr, size_t size)
{
	return jitmem_codegen_writable_diff(rx_ptr, size);
}

/// Ends the use of a writable region: checks diff and makes the code written in
/// [rx_ptr, rx_ptr + size) runnable (instruction cache); the view lives with the allocation.
inline bool FreeWritableRegion(void* rx_ptr, size_t size, ptrdiff_t diff)
{
	return jitmem_codegen_free_writable_region(rx_ptr, size, diff) == JITMEM_STATUS_OK;
}

/// Makes the code written in [ptr, ptr + size) (inside one allocation) runnable: instruction
/// cache maintenance, in every mode. Call it after writing through ptr + diff and before running
/// the code, unless JITPageWriteDisableExecuteEnable or FreeWritableRegion comes in between.
inline bool FlushInstructionCache(void* ptr, size_t size)
{
	return jitmem_codegen_flush_instruction_cache(ptr, size) == JITMEM_STATUS_OK;
}

/// Legacy: makes the allocation containing ptr writable, not executable (nests). Mirror
/// modes: checks ptr (the writable view is always writable).
inline bool JITPageWriteEnableExecuteDisable(void* ptr)
{
	return jitmem_codegen_write_enable(ptr) == JITMEM_STATUS_OK;
}

/// Makes the allocation containing ptr runnable. Legacy: executable again once the outermost
/// enable is matched. Mirror modes: its code is made coherent for instruction fetch.
inline bool JITPageWriteDisableExecuteEnable(void* ptr)
{
	return jitmem_codegen_write_disable(ptr) == JITMEM_STATUS_OK;
}

/// RAII wrapper for a Legacy write: enable in the constructor, disable in the destructor (also
/// when an exception leaves the scope).
struct ScopedJITPageWriteAndNoExecute
{
	void* ptr;

	explicit ScopedJITPageWriteAndNoExecute(void* region)
	    : ptr(region)
	{
		JITPageWriteEnableExecuteDisable(ptr);
	}

	~ScopedJITPageWriteAndNoExecute()
	{
		JITPageWriteDisableExecuteEnable(ptr);
	}

	ScopedJITPageWriteAndNoExecute(const ScopedJITPageWriteAndNoExecute&) = delete;
	ScopedJITPageWriteAndNoExecute& operator=(const ScopedJITPageWriteAndNoExecute&) = delete;
};

} // namespace CodeGen

#endif
