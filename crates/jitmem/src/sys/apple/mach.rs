//! Mach errors: a `kern_return_t` as an `io::Error` and as the crate's error.

use std::io;

use mach2::kern_return::{
    KERN_FAILURE, KERN_INVALID_ADDRESS, KERN_INVALID_ARGUMENT, KERN_NO_ACCESS, KERN_NO_SPACE,
    KERN_PROTECTION_FAILURE, KERN_RESOURCE_SHORTAGE, kern_return_t,
};

use crate::error::Error;

/// A `kern_return_t` as an `io::Error` (Mach calls do not set `errno`).
pub(super) fn kern_io_error(kr: kern_return_t) -> io::Error {
    let (kind, what) = match kr {
        KERN_INVALID_ADDRESS => (io::ErrorKind::InvalidInput, "KERN_INVALID_ADDRESS"),
        KERN_PROTECTION_FAILURE => (
            io::ErrorKind::PermissionDenied,
            "KERN_PROTECTION_FAILURE (beyond the maximum protection, or refused by code signing)",
        ),
        KERN_NO_SPACE => (io::ErrorKind::OutOfMemory, "KERN_NO_SPACE"),
        KERN_INVALID_ARGUMENT => (io::ErrorKind::InvalidInput, "KERN_INVALID_ARGUMENT"),
        KERN_FAILURE => (io::ErrorKind::Other, "KERN_FAILURE"),
        KERN_RESOURCE_SHORTAGE => (io::ErrorKind::OutOfMemory, "KERN_RESOURCE_SHORTAGE"),
        KERN_NO_ACCESS => (io::ErrorKind::PermissionDenied, "KERN_NO_ACCESS"),
        _ => (io::ErrorKind::Other, "Mach error"),
    };
    io::Error::new(kind, format!("kern_return_t {kr:#x}: {what}"))
}

/// A failed Mach call as the crate's error.
pub(super) fn kern_error(op: &'static str, kr: kern_return_t) -> Error {
    Error::Os {
        op,
        source: kern_io_error(kr),
    }
}
