/// Declares this image's allow-list of [`JitWriteCallback`](crate::apple::JitWriteCallback)s
/// for [`jit_write_with_callback`](crate::apple::jit_write_with_callback): the Rust form of
/// libpthread's `PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP(...)`, a NULL-terminated array of
/// function pointers in the `__DATA_CONST,__pth_jit_func` section, which libpthread reads at
/// start-up (and, with `jit-write-allowlist-freeze-late`, for each `dlopen`ed image until the
/// callbacks are frozen).
///
/// **jitmem's own callback is always listed**, after yours and before the NULL
/// (`jitmem::apple::jitmem_pthread_jit_copy_callback`): under the
/// `com.apple.security.cs.jit-write-allowlist` entitlement PerThread copies each write scope
/// from its shadow into the `MAP_JIT` pages with it. An app with no callbacks of its own
/// writes `jit_write_allow_callbacks!()`. The macro also registers the list with jitmem when
/// the image loads (a constructor in `__DATA,__mod_init_func`, which dyld runs before `main`,
/// or at `dlopen`), so that PerThread can check that its callback really is listed; without
/// that registration PerThread is refused under the allow-list, with a reason naming this
/// macro.
///
/// **Once per linked image** (Apple, `pthread.h`: "It may be invoked only once per
/// executable/library"). libpthread reads each image's `__pth_jit_func` section only up to the
/// first NULL, and every Rust crate of an executable (or of a `dylib`/`cdylib`) links into the
/// same image, so a second list anywhere in the dependency graph would be silently ignored,
/// and calling its callbacks would terminate the process. The macro therefore defines one
/// unmangled symbol, `JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP`: a second use in the same
/// crate fails to compile ("symbol ... is already defined"), a second use in another crate of
/// the same image fails to link (duplicate symbol; rustc passes every exported and `#[used]`
/// symbol of its rlibs to the linker). List every callback of the image in one place, at the
/// crate that builds the image (the binary), at module scope; jitmem itself declares none.
/// Apple platforms only.
///
/// ```no_run
/// extern "C" fn emit(_ctx: *mut std::ffi::c_void) -> std::ffi::c_int { 0 }
/// extern "C" fn patch(_ctx: *mut std::ffi::c_void) -> std::ffi::c_int { 0 }
/// jitmem::jit_write_allow_callbacks!(emit, patch);
/// ```
#[macro_export]
#[doc(alias = "PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP")]
macro_rules! jit_write_allow_callbacks {
    ($($callback:path),* $(,)?) => {
        #[used]
        #[unsafe(no_mangle)]
        #[unsafe(link_section = "__DATA_CONST,__pth_jit_func")]
        static JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP: [::core::option::Option<
            $crate::apple::JitWriteCallback,
        >; <[&str]>::len(&[$(::core::stringify!($callback)),*]) + 2] = [
            $(::core::option::Option::Some($callback as $crate::apple::JitWriteCallback),)*
            ::core::option::Option::Some(
                $crate::apple::jitmem_pthread_jit_copy_callback as $crate::apple::JitWriteCallback,
            ),
            ::core::option::Option::None,
        ];

        const _: () = {
            /// Registers the list with jitmem when the image loads.
            extern "C" fn jitmem_register_jit_write_allow_list() {
                $crate::apple::__register_jit_write_allow_list(
                    &JITMEM_PTHREAD_JIT_WRITE_ALLOW_CALLBACKS_NP,
                );
            }

            // An initializer of the image: S_MOD_INIT_FUNC_POINTERS ("mod_init_funcs"), which
            // dyld calls when the image loads, before main (Mach-O `loader.h`).
            #[used]
            #[unsafe(link_section = "__DATA,__mod_init_func,mod_init_funcs")]
            static JITMEM_REGISTER_JIT_WRITE_ALLOW_LIST: extern "C" fn() =
                jitmem_register_jit_write_allow_list;
        };
    };
}
