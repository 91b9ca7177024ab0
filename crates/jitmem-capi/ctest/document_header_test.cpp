// A project whose own header is the seed document's MemoryUtil.h, verbatim (its iOS part
// enabled), included before jitmem's with JITMEM_CODEGEN_DOCUMENT_TYPES defined: it compiles,
// links, and the document's own ScopedJITPageWriteAndNoExecute drives jitmem's Legacy mode.
#include <cstdint>
#include <cstdio>
#include <cstring>

#define TARGET_OS_IOS 1

#include "document/MemoryUtil.h" // the document's header, verbatim

#define JITMEM_CODEGEN_DOCUMENT_TYPES
#include "MemoryUtil.h"

int main()
{
	CodeGen::SetJitType(CodeGen::JitType::Legacy);
	const size_t size = 64;
	void* code = CodeGen::AllocateExecutableMemory(size);
	if(!code)
	{
		std::fprintf(stderr, "allocation failed: %s\n", CodeGen::LastError());
		return 1;
	}
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(code); // the document's struct
#if defined(__x86_64__)
		const uint8_t ret7[] = {0xB8, 7, 0, 0, 0, 0xC3};
#else
		const uint8_t ret7[] = {0xE0, 0x00, 0x80, 0x52, 0xC0, 0x03, 0x5F, 0xD6};
#endif
		std::memcpy(code, ret7, sizeof(ret7));
	}
	int result = reinterpret_cast<int (*)()>(code)();
	CodeGen::FreeExecutableMemory(code, size);
	if(result != 7 || CodeGen::LastError()[0] != '\0')
	{
		std::fprintf(stderr, "result %d, last error: %s\n", result, CodeGen::LastError());
		return 1;
	}
	std::printf("document header: all passed\n");
	return 0;
}
