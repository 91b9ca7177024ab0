//! The shared library's ELF soname is `libjitmem_capi.so` (rustc sets none), so a program linked
//! against an installed copy records the name, not the path it was linked from, and finds the
//! library through its rpath or the loader's search path wherever the prefix was moved.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if matches!(
        os.as_str(),
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd"
    ) {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libjitmem_capi.so");
    }
}
