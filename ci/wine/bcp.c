/* A stand-in for bcryptprimitives.dll, which Wine 8 lacks: Rust's std imports ProcessPrng
 * from it, so without this DLL every test binary fails to load under Wine. CI only; see
 * shared/PLATFORMS.md. Build:
 *   x86_64-w64-mingw32-gcc -shared -o bcryptprimitives.dll bcp.c bcp.def -ladvapi32 */
#include <windows.h>
#include <ntsecapi.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) { return RtlGenRandom(data, (ULONG)len); }
