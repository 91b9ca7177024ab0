// A consumer of an installed jitmem: allocates, writes and runs code through the C API
// (jitmem.h) and through seed 000's C++ CodeGen API (MemoryUtil.h). Prints "consumer: ok".
#include "MemoryUtil.h"
#include "jitmem.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#define CHECK(cond)                                                                        \
	do                                                                                     \
	{                                                                                      \
		if(!(cond))                                                                        \
		{                                                                                  \
			std::fprintf(stderr, "consumer: CHECK(%s) failed at line %d; last error: %s\n", \
			             #cond, __LINE__, jitmem_last_error());                             \
			return 1;                                                                      \
		}                                                                                  \
	} while(0)

// A function returning `value`.
static size_t MakeFunction(uint8_t* dst, uint32_t value)
{
#if defined(__x86_64__) || defined(_M_X64)
	dst[0] = 0xB8; // mov eax, imm32; ret
	std::memcpy(dst + 1, &value, 4);
	dst[5] = 0xC3;
	return 6;
#elif defined(__aarch64__) || defined(_M_ARM64)
	const uint32_t insns[3] = {0x52800000u | ((value & 0xFFFFu) << 5),
	                           0x72A00000u | ((value >> 16) << 5), 0xD65F03C0u};
	std::memcpy(dst, insns, sizeof insns);
	return sizeof insns;
#else
#error "jitmem supports x86-64 and AArch64"
#endif
}

typedef uint32_t (*Func)();

static uint32_t Call(void* code)
{
	Func f;
	std::memcpy(&f, &code, sizeof f);
	return f();
}

int main()
{
	// The C API: a memory with the probe's strategy, one block, written and published.
	jitmem_config config;
	std::memset(&config, 0, sizeof config);
	jitmem_memory* memory = nullptr;
	CHECK(jitmem_memory_new(&config, &memory) == JITMEM_STATUS_OK);
	void* code = nullptr;
	CHECK(jitmem_alloc(memory, 64, 0, &code) == JITMEM_STATUS_OK);
	void* rw = nullptr;
	CHECK(jitmem_write_begin(memory, code, 64, &rw) == JITMEM_STATUS_OK);
	MakeFunction(static_cast<uint8_t*>(rw), 1234);
	CHECK(jitmem_write_end(memory, code, 0) == JITMEM_STATUS_OK);
	CHECK(Call(code) == 1234);
	CHECK(jitmem_free(memory, code) == JITMEM_STATUS_OK);
	CHECK(jitmem_free(memory, code) != JITMEM_STATUS_OK); // a double free is refused
	CHECK(jitmem_memory_free(memory) == JITMEM_STATUS_OK);

	// The CodeGen API, in each of its modes.
	const CodeGen::JitType types[] = {CodeGen::JitType::Legacy, CodeGen::JitType::LuckNoTXM,
	                                  CodeGen::JitType::LuckTXM};
	uint32_t value = 40;
	for(CodeGen::JitType type : types)
	{
		CHECK(CodeGen::SetJitTypeChecked(type));
		const size_t size = 4096;
		void* rx = CodeGen::AllocateExecutableMemory(size);
		CHECK(rx != nullptr);
		ptrdiff_t diff = CodeGen::AllocateWritableRegionAndGetDiff(rx, size);
		CHECK(diff != CodeGen::WritableDiffError);
		{
			CodeGen::ScopedJITPageWriteAndNoExecute guard(rx);
			MakeFunction(static_cast<uint8_t*>(rx) + diff, value);
		}
		CHECK(CodeGen::FreeWritableRegionChecked(rx, size, diff));
		CHECK(Call(rx) == value);
		CHECK(CodeGen::FreeExecutableMemoryChecked(rx, size));
		value++;
	}
	std::printf("consumer: ok\n");
	return 0;
}
