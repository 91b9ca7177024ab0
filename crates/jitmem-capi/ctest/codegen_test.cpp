// Seed 000's test program and usage flows, written only against its MemoryUtil.h API, run in
// the mode named on the command line (Legacy, LuckNoTXM or LuckTXM).
#include "MemoryUtil.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

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

// A function returning a constant held in one aligned 32-bit word at kPatchOffset, so that a
// patch is one store that instruction fetch sees whole (old or new, never torn).
#if defined(__x86_64__)
static const size_t kPatchOffset = 4;
static const uint8_t kPatchable[] = {0x90, 0x90, 0x90, 0xB8, 0, 0, 0, 0, 0xC3}; // nop x3; mov eax, imm32; ret
static uint32_t PatchWord(uint32_t value)
{
	return value; // the imm32
}
#else
static const size_t kPatchOffset = 0;
static const uint8_t kPatchable[] = {0, 0, 0, 0, 0xC0, 0x03, 0x5F, 0xD6}; // movz w0, #imm16; ret
static uint32_t PatchWord(uint32_t value)
{
	return 0x52800000u | ((value & 0xFFFFu) << 5); // the whole movz
}
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

// Live patching through the seed's API, the same code in every mode: diff =
// AllocateWritableRegionAndGetDiff(ptr, size), one store through ptr + diff, then
// FreeWritableRegion(ptr, size, diff) (which publishes). Legacy writes in place (diff 0) and
// needs JITPageWriteEnableExecuteDisable around the store (ScopedJITPageWriteAndNoExecute,
// ok() there); the mirror modes need nothing else (the guard's ok() is false: nothing is
// writable in place). Legacy makes the pages non-executable while they are written, so no
// other thread may run the code then; in the mirror modes another thread calls it throughout.
static void Patch(CodeGen::JitType type, uint8_t* code, uint32_t value)
{
	uint8_t* at = code + kPatchOffset;
	ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(at, 4);
	CHECK(diff != CodeGen::WritableDiffError);
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(code);
		CHECK(guard.ok() == (type == CodeGen::JitType::Legacy));
		__atomic_store_n(reinterpret_cast<uint32_t*>(at + diff), PatchWord(value), __ATOMIC_RELEASE);
	}
	CHECK(CodeGen::FreeWritableRegionChecked(at, 4, diff));
}

static void LivePatch(CodeGen::JitType type)
{
	const size_t size = 64;
	const uint32_t kPatches = 2000;
	uint8_t* code = static_cast<uint8_t*>(CodeGen::AllocateExecutableMemory(size));
	CHECK(code != nullptr);
	CHECK(reinterpret_cast<uintptr_t>(code + kPatchOffset) % 4 == 0);
	ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(code, size);
	CHECK(diff != CodeGen::WritableDiffError);
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(code);
		std::memcpy(code + diff, kPatchable, sizeof(kPatchable));
	}
	CHECK(CodeGen::FreeWritableRegionChecked(code, size, diff));
	Patch(type, code, 1);
	typedef uint32_t (*Func)();
	Func f = reinterpret_cast<Func>(code);
	CHECK(f() == 1);

	const bool concurrent = type != CodeGen::JitType::Legacy;
	std::atomic<bool> stop{false};
	std::atomic<bool> bad{false};
	std::atomic<uint32_t> seen{1};
	std::atomic<uint64_t> calls{0};
	std::thread runner;
	if(concurrent)
	{
		runner = std::thread([&] {
			while(!stop.load(std::memory_order_acquire))
			{
				uint32_t v = f();
				if(v < 1 || v > kPatches)
					bad.store(true);
				seen.store(v, std::memory_order_release);
				calls.fetch_add(1, std::memory_order_relaxed);
			}
		});
	}
	for(uint32_t v = 2; v <= kPatches; v++)
	{
		Patch(type, code, v);
		if(!concurrent)
			CHECK(f() == v);
	}
	if(concurrent)
	{
		auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
		while(seen.load(std::memory_order_acquire) != kPatches && std::chrono::steady_clock::now() < deadline)
			std::this_thread::yield();
		stop.store(true, std::memory_order_release);
		runner.join();
		CHECK(!bad.load());
		CHECK(seen.load() == kPatches);
		CHECK(calls.load() > 0);
	}
	CHECK(f() == kPatches);
	CHECK(CodeGen::FreeExecutableMemoryChecked(code, size));
	std::printf("LivePatch passed (%s)\n", concurrent ? "another thread running the code" : "no other thread: Legacy");
}

// Misuse is visible: in the mirror modes JITPageWriteEnableExecuteDisable makes nothing
// writable in place, and its checked form says so.
static void WriteEnableInMirrorModes(CodeGen::JitType type)
{
	void* p = CodeGen::AllocateExecutableMemory(64);
	CHECK(p != nullptr);
	bool enabled = CodeGen::JITPageWriteEnableExecuteDisableChecked(p);
	if(type == CodeGen::JitType::Legacy)
	{
		CHECK(enabled);
		CHECK(CodeGen::JITPageWriteDisableExecuteEnableChecked(p));
	}
	else
	{
		CHECK(!enabled);
		CHECK(std::strstr(CodeGen::LastError(), "AllocateWritableRegionAndGetDiff") != nullptr);
		CHECK(std::strstr(CodeGen::LastError(), type == CodeGen::JitType::LuckTXM ? "LuckTXM:" : "LuckNoTXM:") != nullptr);
		CodeGen::ScopedJITPageWriteAndNoExecute guard(p);
		CHECK(!guard.ok());
		CHECK(guard.status() == JITMEM_STATUS_WRITE_THROUGH_DIFF);
	}
	CHECK(CodeGen::FreeExecutableMemoryChecked(p, 64));
	std::printf("WriteEnableInMirrorModes passed\n");
}

// LastErrorString copies; messages name the modes as C++ does; the scoped guard reports a
// failed enable.
static void ErrorText(CodeGen::JitType type)
{
	void* p = CodeGen::AllocateExecutableMemory(64);
	CHECK(p != nullptr);
	const CodeGen::JitType other = type == CodeGen::JitType::Legacy ? CodeGen::JitType::LuckTXM : CodeGen::JitType::Legacy;
	CHECK(!CodeGen::SetJitTypeChecked(other));
	std::string text = CodeGen::LastErrorString();
	CHECK(text == CodeGen::LastError());
	const char* names[] = {"Legacy", "LuckNoTXM", "LuckTXM"};
	CHECK(text.find(std::string("from ") + names[static_cast<int>(type)] + " to " + names[static_cast<int>(other)]) != std::string::npos);
	CHECK(text.find("LuckTxm") == std::string::npos && text.find("LuckNoTxm") == std::string::npos);
	CHECK(CodeGen::FreeExecutableMemoryChecked(p, 64));
	CHECK(CodeGen::LastError()[0] == '\0');
	CHECK(!text.empty()); // the copy outlives the message
	int x = 0;
	{
		CodeGen::ScopedJITPageWriteAndNoExecute guard(&x);
		CHECK(!guard.ok());
		CHECK(guard.status() == JITMEM_STATUS_UNKNOWN_POINTER);
	}
	std::printf("ErrorText passed\n");
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
	LivePatch(type);
	WriteEnableInMirrorModes(type);
	ErrorText(type);
	if(type == CodeGen::JitType::Legacy)
		CompileBlock_Legacy();
	else
		CompileBlock();
	std::printf("%s: all passed\n", mode.c_str());
	return 0;
}
