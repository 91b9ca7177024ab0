//! `cmake --install` of the C API, used as a C++ project would use it: CMake builds jitmem
//! (through cargo) and installs it into a temporary prefix, which is then moved (the package must
//! be relocatable); `ctest/consumer` (C API and CodeGen API: allocate, write, run) is built
//! against the moved prefix with `find_package(jitmem)` (static and shared) and with
//! `pkg-config --static --cflags --libs jitmem` (static), with no cargo involved, and run. A
//! prebuilt library (`JITMEM_PREBUILT_DIR`) is configured, tested and installed without cargo.
//! Without `cmake` (or `pkg-config`) the test says so and passes, unless `JITMEM_REQUIRE_CMAKE`
//! is set (CI sets it).

#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{have, run};

fn fresh_dir(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).unwrap();
    }
    std::fs::create_dir_all(path).unwrap();
}

/// Runs a consumer binary and checks it did everything.
fn run_consumer(exe: &Path, lib_path: Option<&Path>) {
    let mut cmd = Command::new(exe);
    if let Some(dir) = lib_path {
        cmd.env("LD_LIBRARY_PATH", dir)
            .env("DYLD_LIBRARY_PATH", dir);
    }
    let text = run(&mut cmd);
    assert!(text.contains("consumer: ok"), "{text}");
}

/// The shared libraries `exe` needs (ELF DT_NEEDED), or None where readelf cannot tell.
fn needed(exe: &Path) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let out = Command::new("readelf").arg("-d").arg(exe).output().ok()?;
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("(NEEDED)"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// rustc's list of system libraries for jitmem-capi's static library.
fn rustc_native_static_libs(cargo_dir: &Path) -> String {
    let text = run(Command::new(env!("CARGO"))
        .env("CARGO_TARGET_DIR", cargo_dir)
        .args([
            "rustc",
            "--release",
            "-p",
            "jitmem-capi",
            "--crate-type",
            "staticlib",
        ])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(["--", "--print", "native-static-libs"]));
    let line = text
        .lines()
        .find_map(|l| l.split_once("native-static-libs:"))
        .unwrap_or_else(|| panic!("no native-static-libs note in:\n{text}"))
        .1;
    line.trim().to_owned()
}

#[test]
fn installed_package_serves_cmake_and_pkg_config_consumers() {
    if !have("cmake", "the install test was") {
        return;
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let work = tmp.join("install");
    let build = work.join("build");
    let staged = work.join("staged");
    let prefix = work.join("prefix");
    let static_prefix = work.join("static-prefix");
    // The same cargo target directory as tests/ctest.rs: one release build of jitmem for both.
    let cargo_dir = tmp.join("cmake").join("cargo");
    for dir in [&staged, &prefix, &static_prefix] {
        fresh_dir(dir);
    }

    run(Command::new("cmake")
        .arg("-S")
        .arg(source)
        .arg("-B")
        .arg(&build)
        .args(["-DCMAKE_BUILD_TYPE=Release", "-DJITMEM_BUILD_TESTS=OFF"])
        .arg(format!("-DJITMEM_CARGO_TARGET_DIR={}", cargo_dir.display())));
    run(Command::new("cmake")
        .arg("--build")
        .arg(&build)
        .args(["-j", "2"]));
    run(Command::new("cmake")
        .arg("--install")
        .arg(&build)
        .arg("--prefix")
        .arg(&staged));
    // The static-only install: the Development component (no shared library).
    run(Command::new("cmake")
        .arg("--install")
        .arg(&build)
        .arg("--prefix")
        .arg(&static_prefix)
        .args(["--component", "Development"]));
    // Relocatable: consumers use the prefix after it moved.
    std::fs::remove_dir(&prefix).unwrap();
    std::fs::rename(&staged, &prefix).unwrap();

    for file in [
        "include/jitmem.h",
        "include/MemoryUtil.h",
        "lib/libjitmem_capi.a",
        "lib/cmake/jitmem/jitmemConfig.cmake",
        "lib/cmake/jitmem/jitmemConfigVersion.cmake",
        "lib/pkgconfig/jitmem.pc",
    ] {
        assert!(prefix.join(file).is_file(), "{file} was not installed");
        assert!(
            static_prefix.join(file).is_file(),
            "{file} not in Development"
        );
    }
    let shared = if cfg!(target_os = "macos") {
        "lib/libjitmem_capi.dylib"
    } else {
        "lib/libjitmem_capi.so"
    };
    assert!(prefix.join(shared).is_file(), "{shared} was not installed");
    assert!(
        !static_prefix.join(shared).exists(),
        "{shared} is Runtime, not Development"
    );
    for file in [
        "lib/cmake/jitmem/jitmemConfig.cmake",
        "lib/cmake/jitmem/jitmemConfigVersion.cmake",
        "lib/pkgconfig/jitmem.pc",
    ] {
        let text = std::fs::read_to_string(prefix.join(file)).unwrap();
        assert!(!text.contains("cargo"), "{file} mentions cargo:\n{text}");
        assert!(
            !text.contains(staged.to_str().unwrap()),
            "{file} names the install prefix (not relocatable):\n{text}"
        );
    }

    // The system libraries named by the package are rustc's list for this target.
    let pc = std::fs::read_to_string(prefix.join("lib/pkgconfig/jitmem.pc")).unwrap();
    let private = pc
        .lines()
        .find_map(|l| l.strip_prefix("Libs.private:"))
        .expect("jitmem.pc has Libs.private")
        .trim();
    assert_eq!(private, rustc_native_static_libs(&cargo_dir), "{pc}");

    // A library built beforehand (here: the static one of the build above, alone) configured,
    // tested and installed with no cargo at all: JITMEM_PREBUILT_DIR, and a cargo that does not
    // exist.
    let prebuilt_lib = work.join("prebuilt-lib");
    let prebuilt = work.join("prebuilt-build");
    let prebuilt_prefix = work.join("prebuilt-prefix");
    for dir in [&prebuilt_lib, &prebuilt, &prebuilt_prefix] {
        fresh_dir(dir);
    }
    std::fs::copy(
        prefix.join("lib/libjitmem_capi.a"),
        prebuilt_lib.join("libjitmem_capi.a"),
    )
    .unwrap();
    let configure = run(Command::new("cmake")
        .arg("-S")
        .arg(source)
        .arg("-B")
        .arg(&prebuilt)
        .arg(format!("-DJITMEM_PREBUILT_DIR={}", prebuilt_lib.display()))
        .args([
            "-DJITMEM_CARGO=/nonexistent/cargo",
            "-DJITMEM_BUILD_TESTS=ON",
        ]));
    let built = run(Command::new("cmake").arg("--build").arg(&prebuilt));
    for text in [&configure, &built] {
        assert!(!text.contains("cargo build"), "cargo ran:\n{text}");
    }
    let text = run(Command::new("ctest")
        .arg("--test-dir")
        .arg(&prebuilt)
        .args(["--output-on-failure", "--no-tests=error"]));
    assert!(text.contains("100% tests passed"), "{text}");
    run(Command::new("cmake")
        .arg("--install")
        .arg(&prebuilt)
        .arg("--prefix")
        .arg(&prebuilt_prefix));
    assert!(prebuilt_prefix.join("lib/libjitmem_capi.a").is_file());
    assert!(
        prebuilt_prefix
            .join("lib/cmake/jitmem/jitmemConfig.cmake")
            .is_file()
    );
    assert!(!prebuilt_prefix.join(shared).exists());

    // find_package(jitmem), static then shared, against the moved prefix.
    let consumer_src = source.join("ctest").join("consumer");
    for shared_lib in [false, true] {
        let dir = work.join(if shared_lib {
            "consumer-shared"
        } else {
            "consumer-static"
        });
        fresh_dir(&dir);
        let configure = run(Command::new("cmake")
            .arg("-S")
            .arg(&consumer_src)
            .arg("-B")
            .arg(&dir)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg(format!(
                "-DCONSUMER_SHARED={}",
                if shared_lib { "ON" } else { "OFF" }
            )));
        let built = run(Command::new("cmake").arg("--build").arg(&dir));
        for text in [&configure, &built] {
            assert!(!text.contains("cargo"), "the consumer ran cargo:\n{text}");
        }
        let exe = dir.join("consumer");
        run_consumer(&exe, None);
        if let Some(needed) = needed(&exe) {
            assert_eq!(
                needed.contains("[libjitmem_capi.so]"),
                shared_lib,
                "shared: {shared_lib}; needed:\n{needed}"
            );
        }
    }

    // pkg-config: static (from the static-only prefix), then shared.
    if !have("pkg-config", "its pkg-config part was") {
        return;
    }
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    for (root, static_link) in [(&static_prefix, true), (&prefix, false)] {
        let mut pkg = Command::new("pkg-config");
        pkg.env("PKG_CONFIG_PATH", root.join("lib/pkgconfig"));
        if static_link {
            pkg.arg("--static");
        }
        let flags = run(pkg.args(["--cflags", "--libs", "jitmem"]));
        let flags = flags.lines().nth(1).unwrap().to_owned();
        if static_link && cfg!(target_os = "linux") {
            assert!(flags.contains("-lpthread"), "{flags}");
        }
        let exe = work.join(if static_link {
            "consumer-pc-static"
        } else {
            "consumer-pc-shared"
        });
        run(Command::new(&cxx)
            .arg("-std=c++17")
            .arg(consumer_src.join("consumer.cpp"))
            .arg("-o")
            .arg(&exe)
            .args(flags.split_whitespace()));
        run_consumer(&exe, (!static_link).then(|| root.join("lib")).as_deref());
        if let Some(needed) = needed(&exe) {
            assert_eq!(
                needed.contains("[libjitmem_capi.so]"),
                !static_link,
                "static: {static_link}; needed:\n{needed}"
            );
        }
    }
}
