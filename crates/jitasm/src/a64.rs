//! AArch64 encoder (being written).
