//! [`FnPtr`]: the function-pointer types [`CodeBlock::entry`](crate::CodeBlock::entry) can
//! return. Sealed: implemented here for every ABI and arity a JIT uses, so that asking `entry`
//! for a non-function type (a `u16`, a reference, a closure) does not compile.
//!
//! ```compile_fail
//! # fn f(block: &jitmem::CodeBlock) {
//! // SAFETY: never reached: `u64` is not a function pointer, so this does not compile.
//! let _ = unsafe { block.entry::<u64>(0) };
//! # }
//! ```
//!
//! Unsafe code is allowed here (`#[expect(unsafe_code)]` in `lib.rs`): turns a code address into a function pointer (the one transmute of the crate).

mod sealed {
    pub trait Sealed {}
}

/// A function-pointer type: `fn`, `extern "C" fn`, `extern "C-unwind" fn`, `extern "system"
/// fn` (and on x86-64 `extern "sysv64" fn`, `extern "win64" fn`), safe or `unsafe`, with up to
/// 10 arguments. Sealed: it cannot be implemented outside jitmem.
pub trait FnPtr: Copy + sealed::Sealed {
    /// Makes the pointer from a code address.
    ///
    /// # Safety
    /// `address` is the first instruction of a function with this type's signature and ABI,
    /// which stays mapped and unchanged as long as the pointer is used.
    #[doc(hidden)]
    unsafe fn from_address(address: *const u8) -> Self;
}

/// The function at `offset` of the code range `[base, base + len)`: the one checked way a
/// code address becomes a function pointer (`CodeBlock::entry`, `ExecBuffer::entry`).
///
/// # Safety
/// As `CodeBlock::entry`: a complete, published function of type `F` lives at `offset`, and
/// stays mapped and unchanged while the pointer is used.
pub(crate) unsafe fn entry_at<F: FnPtr>(
    base: std::ptr::NonNull<u8>,
    len: usize,
    offset: usize,
) -> crate::Result<F> {
    if offset >= len {
        return Err(crate::Error::OutOfRange {
            start: offset,
            end: offset.saturating_add(1),
            len,
        });
    }
    let address = base.as_ptr().wrapping_add(offset).cast_const();
    // SAFETY: inside the range (checked); per the caller, a function of type F.
    Ok(unsafe { F::from_address(address) })
}

macro_rules! fn_ptrs {
    ($($abi:literal: [$($arg:ident)*];)*) => {$(
        impl<R, $($arg),*> sealed::Sealed for extern $abi fn($($arg),*) -> R {}
        impl<R, $($arg),*> FnPtr for extern $abi fn($($arg),*) -> R {
            unsafe fn from_address(address: *const u8) -> Self {
                // SAFETY: a function pointer has the size and representation of a code
                // address; the caller promises the signature and ABI.
                unsafe { std::mem::transmute::<*const u8, Self>(address) }
            }
        }
        impl<R, $($arg),*> sealed::Sealed for unsafe extern $abi fn($($arg),*) -> R {}
        impl<R, $($arg),*> FnPtr for unsafe extern $abi fn($($arg),*) -> R {
            unsafe fn from_address(address: *const u8) -> Self {
                // SAFETY: as above.
                unsafe { std::mem::transmute::<*const u8, Self>(address) }
            }
        }
    )*};
}

macro_rules! every_arity {
    ($($abi:literal),*) => {$(
        fn_ptrs! {
            $abi: [];
            $abi: [A];
            $abi: [A B];
            $abi: [A B C];
            $abi: [A B C D];
            $abi: [A B C D E];
            $abi: [A B C D E F];
            $abi: [A B C D E F G];
            $abi: [A B C D E F G H];
            $abi: [A B C D E F G H I];
            $abi: [A B C D E F G H I J];
        }
    )*};
}

every_arity!("Rust", "C", "C-unwind", "system");
#[cfg(target_arch = "x86_64")]
every_arity!("sysv64", "win64");

#[cfg(test)]
mod tests {
    use super::FnPtr;

    extern "C" fn seven() -> u32 {
        7
    }

    #[test]
    fn a_function_address_round_trips() {
        let f: extern "C" fn() -> u32 = seven;
        // SAFETY: the address of `seven`, whose type this is.
        let g: extern "C" fn() -> u32 = unsafe { FnPtr::from_address(f as *const u8) };
        assert_eq!(g(), 7);
    }
}
