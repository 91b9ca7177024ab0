/* Seed 000's CodeGen API (Play!-CodeGen's MemoryUtil.h), implemented by jitmem on every
 * platform jitmem supports. A C++ file written against the seed's MemoryUtil.h compiles and
 * links against jitmem with no other change; no TARGET_OS_IOS guard is needed.
 *
 * Modes: Legacy = Toggle + PerAllocation (write in place between
 * JITPageWriteEnableExecuteDisable and JITPageWriteDisableExecuteEnable), LuckNoTXM = Mirror +
 * pooled pages whose writable alias is accessible only between AllocateWritableRegionAndGetDiff
 * and FreeWritableRegion (a store through it afterwards faults, as with the seed's unmapped
 * alias), LuckTXM = Mirror + a 512 MiB arena with a permanent alias (write through ptr + diff).
 *
 * Differences from the seed, all fixes:
 *  - the seed's declarations are kept exactly (void where it said void), and every call that
 *    can fail says so: the reason is in CodeGen::LastError() ("" after a success), and each
 *    void function has a twin named ...Checked that returns false on failure; a project whose
 *    own header is the document's whole MemoryUtil.h includes it first and defines
 *    JITMEM_CODEGEN_DOCUMENT_TYPES, so that JitType and ScopedJITPageWriteAndNoExecute (the
 *    document's definitions) are not defined twice;
 *  - LuckTXM sub-allocates at 16 bytes (the seed's 512 MiB holds millions of small functions,
 *    not 131,072 pages);
 *  - live code is patched the same way in every mode: diff = AllocateWritableRegionAndGetDiff(
 *    ptr, size), store through ptr + diff (diff is 0 in Legacy, inside
 *    JITPageWriteEnableExecuteDisable / JITPageWriteDisableExecuteEnable), then
 *    FreeWritableRegion(ptr, size, diff). In the mirror modes other threads may keep running
 *    the code meanwhile (make each patch one aligned store the CPU fetches atomically); in
 *    Legacy the pages are not executable while written, so no thread may run them.
 *    JITPageWriteEnableExecuteDisable makes nothing writable in place in the mirror modes: its
 *    checked form returns false there and LastError() says to write through the diff;
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
#ifndef JITMEM_CODEGEN_NO_STD_STRING
#include <string>
#endif

#include "jitmem.h"

namespace CodeGen
{

#ifndef JITMEM_CODEGEN_DOCUMENT_TYPES
/// The three JIT modes of seed 000. A project whose own header holds the seed document's
/// MemoryUtil.h (with its enum JitType and struct ScopedJITPageWriteAndNoExecute definitions)
/// includes that header first and defines JITMEM_CODEGEN_DOCUMENT_TYPES before this one: the
/// document's two type definitions are then used and not repeated here.
enum class JitType
{
	Legacy,    ///< W^X toggled with mprotect (iOS < 26 in the seed)
	LuckNoTXM, ///< an RW mirror of each RX allocation while a writable region is open (iOS 26 without TXM)
	LuckTXM    ///< one big region with a permanent RW mirror (iOS 26 with TXM)
};
#endif

/// What AllocateWritableRegionAndGetDiff returns on failure.
constexpr ptrdiff_t WritableDiffError = JITMEM_DIFF_ERROR;

/// The reason the last failed call on this thread failed ("" after a success). The pointer
/// is valid only until the next jitmem call on this thread other than LastError() /
/// LastErrorString() (every CodeGen call rewrites the message, on success too), and never
/// after the thread exits: copy it first, or use LastErrorString().
inline const char* LastError()
{
	return jitmem_last_error();
}

#ifndef JITMEM_CODEGEN_NO_STD_STRING
/// A copy of LastError() that stays valid (jitmem_last_error_copy). Left out when
/// JITMEM_CODEGEN_NO_STD_STRING is defined (freestanding builds without <string>; CI's Apple
/// header check, which has no Apple SDK, compiles that way).
inline std::string LastErrorString()
{
	std::string text(jitmem_last_error_copy(nullptr, 0), '\0');
	if(!text.empty())
		jitmem_last_error_copy(&text[0], text.size() + 1);
	return text;
}
#endif

// ============================================================================
// The seed document's declarations, with its exact signatures (void where it says void), so
// that a project keeping those declarations in its own header compiles against this one and
// function pointers of the document's types bind to these functions. Failures are not lost:
// each call leaves its reason in LastError() (and "" on success), and every function that
// cannot report through its return type here has a checked twin below (...Checked).
// ============================================================================

/// Allocates executable memory; nullptr on failure (see LastError()). LuckTXM sub-allocates
/// (16-byte aligned), the other modes return page-aligned memory.
inline void* AllocateExecutableMemory(size_t size)
{
	return jitmem_codegen_allocate(size);
}

/// Frees memory from AllocateExecutableMemory; size must be the size allocated (anything else
/// is refused, nothing is freed: see FreeExecutableMemoryChecked).
inline void FreeExecutableMemory(void* ptr, size_t size)
{
	static_cast<void>(jitmem_codegen_free(ptr, size));
}

/// Chooses the mode. Refused while allocations of another mode are live (see
/// SetJitTypeChecked).
inline void SetJitType(JitType type)
{
	static_cast<void>(jitmem_codegen_set_jit_type(static_cast<uint32_t>(type)));
}

/// Legacy: makes the allocation containing ptr writable, not executable (nests). Mirror modes
/// (LuckNoTXM, LuckTXM): makes nothing writable in place; write through
/// ptr + AllocateWritableRegionAndGetDiff(ptr, size) (the checked form returns false and says
/// so in LastError()).
inline void JITPageWriteEnableExecuteDisable(void* ptr)
{
	static_cast<void>(jitmem_codegen_write_enable(ptr));
}

/// Makes the allocation containing ptr runnable. Legacy: executable again once the outermost
/// enable is matched. Mirror modes: its code is made coherent for instruction fetch.
inline void JITPageWriteDisableExecuteEnable(void* ptr)
{
	static_cast<void>(jitmem_codegen_write_disable(ptr));
}

/// Sets up the current mode now (LuckTXM: reserves the region). Optional.
inline void AllocateExecutableMemoryRegion()
{
	static_cast<void>(jitmem_codegen_allocate_region());
}

/// The offset to add to rx_ptr to write [rx_ptr, rx_ptr + size) (0 in Legacy mode, where
/// code is written in place inside JITPageWriteEnableExecuteDisable /
/// JITPageWriteDisableExecuteEnable); WritableDiffError on failure. Works on any live
/// allocation, also one whose code is running: this is how live code is patched in the
/// mirror modes (write through rx_ptr + diff, then FreeWritableRegion). LuckNoTXM makes the
/// writable alias accessible here and FreeWritableRegion makes it inaccessible again (calls
/// nest per allocation).
inline ptrdiff_t AllocateWritableRegionAndGetDiff(void* rx_ptr, size_t size)
{
	return jitmem_codegen_writable_diff(rx_ptr, size);
}

/// Ends the use of a writable region: checks diff, makes the code written in
/// [rx_ptr, rx_ptr + size) runnable (instruction cache), and in LuckNoTXM, when it closes the
/// allocation's last open region, makes the writable alias inaccessible (PROT_NONE: a later
/// store through rx_ptr + diff faults). See FreeWritableRegionChecked.
inline void FreeWritableRegion(void* rx_ptr, size_t size, ptrdiff_t diff)
{
	static_cast<void>(jitmem_codegen_free_writable_region(rx_ptr, size, diff));
}

// ============================================================================
// Checked forms (not in the seed document): true on success, false with the reason in
// LastError().
// ============================================================================

/// FreeExecutableMemory, checked.
inline bool FreeExecutableMemoryChecked(void* ptr, size_t size)
{
	return jitmem_codegen_free(ptr, size) == JITMEM_STATUS_OK;
}

/// SetJitType, checked.
inline bool SetJitTypeChecked(JitType type)
{
	return jitmem_codegen_set_jit_type(static_cast<uint32_t>(type)) == JITMEM_STATUS_OK;
}

/// JITPageWriteEnableExecuteDisable, checked: false in the mirror modes (nothing is made
/// writable in place there; LastError() says to write through the diff) and on a bad ptr.
inline bool JITPageWriteEnableExecuteDisableChecked(void* ptr)
{
	return jitmem_codegen_write_enable(ptr) == JITMEM_STATUS_OK;
}

/// JITPageWriteDisableExecuteEnable, checked.
inline bool JITPageWriteDisableExecuteEnableChecked(void* ptr)
{
	return jitmem_codegen_write_disable(ptr) == JITMEM_STATUS_OK;
}

/// AllocateExecutableMemoryRegion, checked.
inline bool AllocateExecutableMemoryRegionChecked()
{
	return jitmem_codegen_allocate_region() == JITMEM_STATUS_OK;
}

/// FreeWritableRegion, checked.
inline bool FreeWritableRegionChecked(void* rx_ptr, size_t size, ptrdiff_t diff)
{
	return jitmem_codegen_free_writable_region(rx_ptr, size, diff) == JITMEM_STATUS_OK;
}

/// Makes the code written in [ptr, ptr + size) (inside one allocation) runnable: instruction
/// cache maintenance, in every mode (not in the seed, which had no flush). Call it after
/// writing through ptr + diff and before running the code, unless
/// JITPageWriteDisableExecuteEnable or FreeWritableRegion comes in between.
inline bool FlushInstructionCache(void* ptr, size_t size)
{
	return jitmem_codegen_flush_instruction_cache(ptr, size) == JITMEM_STATUS_OK;
}

#ifndef JITMEM_CODEGEN_DOCUMENT_TYPES
/// RAII wrapper for a Legacy write: enable in the constructor, disable in the destructor (also
/// when an exception leaves the scope). ok() / status() say whether the enable succeeded (in
/// the mirror modes it never makes ptr writable: status() is JITMEM_STATUS_WRITE_THROUGH_DIFF).
struct ScopedJITPageWriteAndNoExecute
{
	void* ptr;

	ScopedJITPageWriteAndNoExecute(void* region)
	    : ptr(region)
	    , enable_status(jitmem_codegen_write_enable(region))
	{
	}

	~ScopedJITPageWriteAndNoExecute()
	{
		JITPageWriteDisableExecuteEnable(ptr);
	}

	ScopedJITPageWriteAndNoExecute(const ScopedJITPageWriteAndNoExecute&) = delete;
	ScopedJITPageWriteAndNoExecute& operator=(const ScopedJITPageWriteAndNoExecute&) = delete;

	/// True when the constructor's JITPageWriteEnableExecuteDisable succeeded (Legacy: ptr is
	/// writable in place until the destructor).
	bool ok() const
	{
		return enable_status == JITMEM_STATUS_OK;
	}

	/// The constructor's status.
	jitmem_status status() const
	{
		return enable_status;
	}

private:
	jitmem_status enable_status;
};
#endif


} // namespace CodeGen

#endif
