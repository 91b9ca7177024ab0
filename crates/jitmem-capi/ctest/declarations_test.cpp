// Seed 000's MemoryUtil.h declarations, copied verbatim from the document (its "API PUBLIQUE",
// iOS types and internal sections), redeclared before and after jitmem's MemoryUtil.h: a
// project that keeps them in its own header compiles against jitmem's, and function pointers
// of the document's types bind to jitmem's functions. The document's enum and struct
// definitions cannot be repeated in one program (they are definitions, not declarations): the
// enum is redeclared opaquely, and the struct is checked to construct as the document's does.
#include <cstddef>
#include <cstdio>
#include <type_traits>

// Before jitmem's header (the project's header included first).
namespace CodeGen
{
enum class JitType;
void* AllocateExecutableMemory(size_t size);
void FreeExecutableMemory(void* ptr, size_t size);
void SetJitType(JitType type);
void JITPageWriteEnableExecuteDisable(void* ptr);
void JITPageWriteDisableExecuteEnable(void* ptr);
void AllocateExecutableMemoryRegion();
ptrdiff_t AllocateWritableRegionAndGetDiff(void* rx_ptr, size_t size);
void FreeWritableRegion(void* rx_ptr, size_t size, ptrdiff_t diff);
} // namespace CodeGen

#include "MemoryUtil.h"

// After it (the project's header included second), every declaration of the document.
namespace CodeGen
{
void* AllocateExecutableMemory(size_t size);
void FreeExecutableMemory(void* ptr, size_t size);
void SetJitType(JitType type);
void JITPageWriteEnableExecuteDisable(void* ptr);
void JITPageWriteDisableExecuteEnable(void* ptr);
void AllocateExecutableMemoryRegion();
ptrdiff_t AllocateWritableRegionAndGetDiff(void* rx_ptr, size_t size);
void FreeWritableRegion(void* rx_ptr, size_t size, ptrdiff_t diff);

// The document's internal declarations ("ne pas utiliser directement"): declared, never
// defined by the seed's users, so only their declarations are checked.
void* AllocateExecutableMemory_LuckTXM(size_t size);
void FreeExecutableMemory_LuckTXM(void* ptr);
void AllocateExecutableMemoryRegion_LuckTXM();
ptrdiff_t AllocateWritableRegionAndGetDiff_LuckTXM();
void* AllocateExecutableMemory_LuckNoTXM(size_t size);
void FreeExecutableMemory_LuckNoTXM(void* ptr, size_t size);
ptrdiff_t AllocateWritableRegionAndGetDiff_LuckNoTXM(void* rx_ptr, size_t size);
void FreeWritableRegion_LuckNoTXM(void* rx_ptr, size_t size, ptrdiff_t diff);
void* AllocateExecutableMemory_Legacy(size_t size);
void FreeExecutableMemory_Legacy(void* ptr, size_t size);
void JITPageWriteEnableExecuteDisable_Legacy(void* ptr);
void JITPageWriteDisableExecuteEnable_Legacy(void* ptr);
} // namespace CodeGen

// The document's struct: constructed from a void* (implicitly, as its non-explicit
// constructor allows), with a public ptr member.
static_assert(std::is_constructible<CodeGen::ScopedJITPageWriteAndNoExecute, void*>::value, "");
static_assert(std::is_convertible<void*, CodeGen::ScopedJITPageWriteAndNoExecute>::value, "");
static_assert(std::is_same<decltype(CodeGen::ScopedJITPageWriteAndNoExecute::ptr), void*>::value, "");
static_assert(std::is_same<std::underlying_type<CodeGen::JitType>::type, int>::value,
              "the document's enum class JitType has the default underlying type");

// Function pointers of the document's exact types.
static void* (*const pAllocateExecutableMemory)(size_t) = &CodeGen::AllocateExecutableMemory;
static void (*const pFreeExecutableMemory)(void*, size_t) = &CodeGen::FreeExecutableMemory;
static void (*const pSetJitType)(CodeGen::JitType) = &CodeGen::SetJitType;
static void (*const pJITPageWriteEnableExecuteDisable)(void*) = &CodeGen::JITPageWriteEnableExecuteDisable;
static void (*const pJITPageWriteDisableExecuteEnable)(void*) = &CodeGen::JITPageWriteDisableExecuteEnable;
static void (*const pAllocateExecutableMemoryRegion)() = &CodeGen::AllocateExecutableMemoryRegion;
static ptrdiff_t (*const pAllocateWritableRegionAndGetDiff)(void*, size_t) =
    &CodeGen::AllocateWritableRegionAndGetDiff;
static void (*const pFreeWritableRegion)(void*, size_t, ptrdiff_t) = &CodeGen::FreeWritableRegion;

int main()
{
	// Use the pointers (Legacy, so that write enable/disable do something), as the seed's
	// dispatcher would through a table.
	pSetJitType(CodeGen::JitType::Legacy);
	pAllocateExecutableMemoryRegion();
	void* p = pAllocateExecutableMemory(64);
	if(!p)
	{
		std::fprintf(stderr, "allocation failed: %s\n", CodeGen::LastError());
		return 1;
	}
	ptrdiff_t diff = pAllocateWritableRegionAndGetDiff(p, 64);
	pJITPageWriteEnableExecuteDisable(p);
	static_cast<unsigned char*>(p)[diff] = 0xCC;
	pJITPageWriteDisableExecuteEnable(p);
	pFreeWritableRegion(p, 64, diff);
	pFreeExecutableMemory(p, 64);
	if(CodeGen::LastError()[0] != '\0')
	{
		std::fprintf(stderr, "a call failed: %s\n", CodeGen::LastError());
		return 1;
	}
	std::printf("declarations: all passed\n");
	return 0;
}
