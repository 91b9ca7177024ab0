// Compiled (syntax and semantics, no code generation) for the Apple targets by check-headers.sh:
// jitmem's C++ CodeGen header and its C API header, as an Apple C++ program includes them.
// No Apple SDK here: libc++'s <string> needs the C library's headers, so LastErrorString() is
// left out (JITMEM_CODEGEN_NO_STD_STRING); everything else of the header is checked.
#define JITMEM_CODEGEN_NO_STD_STRING 1
#include "MemoryUtil.h"
#include "jitmem.h"

#if !defined(__APPLE__) || !defined(__MACH__)
#error "not compiled for an Apple target"
#endif

static_assert(sizeof(void*) == 8 && sizeof(size_t) == 8, "Apple's 64-bit targets are LP64");
static_assert(sizeof(jitmem_config) == 32, "jitmem_config: u32, u32, usize, usize, u32 + padding");
static_assert(CodeGen::WritableDiffError == PTRDIFF_MIN, "the CodeGen API's error value");
static_assert(static_cast<int>(CodeGen::JitType::LuckTXM) == 2, "seed 000's JitType values");

// Every CodeGen entry point, as a caller uses it.
bool UseEveryCall(void* p, size_t n)
{
	CodeGen::ScopedJITPageWriteAndNoExecute guard(p);
	ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(p, n);
	CodeGen::SetJitType(CodeGen::JitType::Legacy);
	CodeGen::AllocateExecutableMemoryRegion();
	CodeGen::FreeWritableRegion(p, n, diff);
	CodeGen::JITPageWriteEnableExecuteDisable(p);
	CodeGen::JITPageWriteDisableExecuteEnable(p);
	CodeGen::FreeExecutableMemory(p, n);
	return guard.ok() && CodeGen::SetJitTypeChecked(CodeGen::JitType::Legacy) &&
	       CodeGen::AllocateExecutableMemoryRegionChecked() && CodeGen::AllocateExecutableMemory(n) != nullptr &&
	       CodeGen::FreeWritableRegionChecked(p, n, diff) && CodeGen::FlushInstructionCache(p, n) &&
	       CodeGen::JITPageWriteEnableExecuteDisableChecked(p) &&
	       CodeGen::JITPageWriteDisableExecuteEnableChecked(p) && CodeGen::FreeExecutableMemoryChecked(p, n) &&
	       CodeGen::LastError() != nullptr;
}
