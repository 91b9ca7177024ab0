//! Two allow-listed callbacks, declared with jitmem's `jit_write_allow_callbacks!` (the macro
//! file is included as is; `$crate::apple::JitWriteCallback` resolves to the type below).
#![no_std]

/// The same type as `jitmem::apple::JitWriteCallback`.
pub mod apple {
    pub type JitWriteCallback = extern "C" fn(ctx: *mut core::ffi::c_void) -> core::ffi::c_int;
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

jit_write_allow_callbacks!(allowlisted_first, allowlisted_second);

/// A second list in the same image: the unmangled symbol makes this a compile error.
#[cfg(feature = "twice")]
pub mod again {
    jit_write_allow_callbacks!(super::allowlisted_first);
}
