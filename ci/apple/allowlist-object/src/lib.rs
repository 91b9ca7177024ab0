//! Two allow-listed callbacks, declared with jitmem's `jit_write_allow_callbacks!` (the macro
//! file is included as is; `$crate::apple::...` resolves to the stand-ins below), which adds
//! jitmem's copy callback and a load-time constructor registering the list. With the `empty`
//! feature, `jit_write_allow_callbacks!()` instead (an app without callbacks of its own).
#![no_std]

/// Stand-ins for what the macro names in `jitmem::apple`, with the same types and, for the
/// callback, the same unmangled symbol.
pub mod apple {
    pub type JitWriteCallback = extern "C" fn(ctx: *mut core::ffi::c_void) -> core::ffi::c_int;

    /// jitmem's copy callback (`jitmem::apple::jitmem_pthread_jit_copy_callback`).
    #[unsafe(no_mangle)]
    #[inline(never)]
    pub extern "C" fn jitmem_pthread_jit_copy_callback(
        _ctx: *mut core::ffi::c_void,
    ) -> core::ffi::c_int {
        -1
    }

    /// `jitmem::apple::__register_jit_write_allow_list`.
    pub fn __register_jit_write_allow_list(_list: &'static [Option<JitWriteCallback>]) {}
}

include!("../../../../crates/jitmem/src/jit_write_allow_callbacks.rs");

/// First callback.
pub extern "C" fn allowlisted_first(_ctx: *mut core::ffi::c_void) -> core::ffi::c_int {
    1
}

/// Second callback.
pub extern "C" fn allowlisted_second(_ctx: *mut core::ffi::c_void) -> core::ffi::c_int {
    2
}

#[cfg(not(feature = "empty"))]
jit_write_allow_callbacks!(allowlisted_first, allowlisted_second);

#[cfg(feature = "empty")]
jit_write_allow_callbacks!();

/// A second list in the same image: the unmangled symbol makes this a compile error.
#[cfg(feature = "twice")]
pub mod again {
    jit_write_allow_callbacks!(super::allowlisted_first);
}
