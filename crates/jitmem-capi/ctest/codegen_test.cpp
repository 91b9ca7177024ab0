// Seed 000's test program and usage flows, written only against its MemoryUtil.h API, run in
// the mode named on the command line (Legacy, LuckNoTXM or LuckTXM).
#include "MemoryUtil.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#define CHECK(cond)                                                                        \
	do                                                                                     \
	{                                                                                      \
		if(!(cond))                                                                        \
		{                                                                                  \
			std::fprintf(stderr, "%s:%d: CHECK(%s) failed; last error: %s\n", __FILE__,    \
			             __LINE__, #cond, CodeGen::LastError());                           \
			std::exit(1);                                                                  \
		}                                                                                  \
	} while(0)

// The machine's own `ret`, and a function returning 42.
#if defined(__x86_64__)
static const uint8_t kRet[] = {0xC3};
static const uint8_t kReturn42[] = {0xB8, 42, 0, 0, 0, 0xC3}; // mov eax, 42; ret
#elif defined(__aarch64__)
static const uint8_t kRet[] = {0xC0, 0x03, 0x5F, 0xD6};                         // ret (0xD65F03C0)
static const uint8_t kReturn42[] = {0x40, 0x05, 0x80, 0x52, 0xC0, 0x03, 0x5F, 0xD6}; // mov w0, #42; ret
#else
#error "jitmem supports x86-64 and AArch64"
#endif

static void GenerateCode(void* dst, size_t size)
{
	CHECK(size >= sizeof(kReturn42));
	std::memcpy(dst, kReturn42, sizeof(kReturn42));
}

// The seed's TestJITAllocation. The write is inside ScopedJITPageWriteAndNoExecute, which
// Legacy needs (diff is 0 there: code is written in place) and the mirror modes ignore.
static void TestJITAllocation()
{
	const size_t testSize = 4096;
	void* ptr = CodeGen::AllocateExecutableMemory(testSize);
	CHECK(ptr != nullptr);
	ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(ptr, testSize);
	CHECK(diff != CodeGen::WritableDiffError);
	void* rw_ptr = static_cast<uint8_t*>(ptr) + diff;
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(ptr);
		std::memcpy(rw_ptr, kRet, sizeof(kRet));
	}
	typedef void (*EmptyFunc)();
	EmptyFunc func = reinterpret_cast<EmptyFunc>(ptr);
	func();
	CHECK(CodeGen::FreeWritableRegionChecked(ptr, testSize, diff));
	CHECK(CodeGen::FreeExecutableMemoryChecked(ptr, testSize));
	std::printf("JIT allocation test passed\n");
}

// The seed's CompileBlock (mirror modes).
static void CompileBlock()
{
	const size_t codeSize = 4096;
	void* rx_ptr = CodeGen::AllocateExecutableMemory(codeSize);
	CHECK(rx_ptr != nullptr);
	ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(rx_ptr, codeSize);
	CHECK(diff != CodeGen::WritableDiffError && diff != 0);
	void* rw_ptr = static_cast<uint8_t*>(rx_ptr) + diff;
	GenerateCode(rw_ptr, codeSize);
	// The seed ran the code here, before FreeWritableRegion, with no cache maintenance: stale
	// on AArch64 and iOS. Publish first.
	CHECK(CodeGen::FlushInstructionCache(rx_ptr, sizeof(kReturn42)));
	CHECK(!CodeGen::FlushInstructionCache(rx_ptr, codeSize + 1));
	typedef int (*Func)();
	Func f = reinterpret_cast<Func>(rx_ptr);
	CHECK(f() == 42);
	CHECK(CodeGen::FreeWritableRegionChecked(rx_ptr, codeSize, diff));
	CHECK(CodeGen::FreeExecutableMemoryChecked(rx_ptr, codeSize));
	std::printf("CompileBlock passed\n");
}

// The seed's CompileBlock_Legacy, with nested guards as a JIT's helpers produce them.
static void CompileBlock_Legacy()
{
	const size_t codeSize = 4096;
	void* code = CodeGen::AllocateExecutableMemory(codeSize);
	CHECK(code != nullptr);
	CHECK(CodeGen::AllocateWritableRegionAndGetDiff(code, codeSize) == 0);
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(code);
		{
			CodeGen::ScopedJITPageWriteAndNoExecute inner(static_cast<uint8_t*>(code) + 100);
			GenerateCode(code, codeSize);
		}
		// Still writable: the outer guard is open.
		static_cast<uint8_t*>(code)[1] = 42;
	}
	typedef int (*Func)();
	Func f = reinterpret_cast<Func>(code);
	CHECK(f() == 42);
	CHECK(CodeGen::FreeExecutableMemoryChecked(code, codeSize));
	std::printf("CompileBlock_Legacy passed\n");
}

int main(int argc, char** argv)
{
	CHECK(argc == 2);
	std::string mode = argv[1];
	CodeGen::JitType type;
	if(mode == "Legacy")
		type = CodeGen::JitType::Legacy;
	else if(mode == "LuckNoTXM")
		type = CodeGen::JitType::LuckNoTXM;
	else if(mode == "LuckTXM")
		type = CodeGen::JitType::LuckTXM;
	else
		return 2;

	// The seed's InitializeJIT.
	CHECK(CodeGen::SetJitTypeChecked(type));
	if(type == CodeGen::JitType::LuckTXM)
	{
		CHECK(CodeGen::AllocateExecutableMemoryRegionChecked());
	}

	TestJITAllocation();
	if(type == CodeGen::JitType::Legacy)
		CompileBlock_Legacy();
	else
		CompileBlock();
	std::printf("%s: all passed\n", mode.c_str());
	return 0;
}
