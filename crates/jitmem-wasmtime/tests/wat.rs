//! Runs a real wasm module (text format) under wasmtime with jitmem's custom code memory and
//! compares every result with wasmtime's own code memory.

use std::sync::Arc;

use jitmem_wasmtime::JitmemCodeMemory;
use wasmtime::{Config, Engine, Instance, Module, Store};

const WAT: &str = r#"
(module
  (memory (export "mem") 1)
  ;; recursion
  (func $fib (export "fib") (param $n i64) (result i64)
    (if (result i64) (i64.lt_s (local.get $n) (i64.const 2))
      (then (local.get $n))
      (else (i64.add
        (call $fib (i64.sub (local.get $n) (i64.const 1)))
        (call $fib (i64.sub (local.get $n) (i64.const 2)))))))
  ;; a loop
  (func $sum_to (export "sum_to") (param $n i64) (result i64)
    (local $i i64) (local $acc i64)
    (block $done
      (loop $next
        (br_if $done (i64.gt_s (local.get $i) (local.get $n)))
        (local.set $acc (i64.add (local.get $acc) (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $next)))
    (local.get $acc))
  ;; memory, and calls between functions
  (func (export "squares") (param $n i32) (result i64)
    (local $i i32) (local $acc i64)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (i64.store (i32.mul (local.get $i) (i32.const 8))
          (i64.mul (i64.extend_i32_u (local.get $i)) (i64.extend_i32_u (local.get $i))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.set $i (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $acc (i64.add (local.get $acc) (i64.load (i32.mul (local.get $i) (i32.const 8)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i64.add (local.get $acc) (call $sum_to (i64.const 0))))
)
"#;

/// Every export called with a few inputs, on an engine built from `config`.
fn run_all(config: &Config) -> Vec<i64> {
    let engine = Engine::new(config).unwrap();
    let module = Module::new(&engine, WAT).unwrap();
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let fib = instance
        .get_typed_func::<i64, i64>(&mut store, "fib")
        .unwrap();
    let sum_to = instance
        .get_typed_func::<i64, i64>(&mut store, "sum_to")
        .unwrap();
    let squares = instance
        .get_typed_func::<i32, i64>(&mut store, "squares")
        .unwrap();
    let mut out = Vec::new();
    for n in [0, 1, 2, 10, 20] {
        out.push(fib.call(&mut store, n).unwrap());
    }
    for n in [0, 1, 100, 10_000] {
        out.push(sum_to.call(&mut store, n).unwrap());
    }
    for n in [0, 3, 1000] {
        out.push(squares.call(&mut store, n).unwrap());
    }
    out
}

#[test]
fn wat_module_runs_with_jitmem_code_memory_and_matches_wasmtimes_own() {
    let memory = Arc::new(JitmemCodeMemory::new().unwrap());
    let mut config = Config::new();
    config.with_custom_code_memory(Some(memory.clone()));
    let ours = run_all(&config);
    assert!(memory.publishes() >= 1, "wasmtime published through jitmem");
    assert!(
        memory.unpublishes() >= 1,
        "dropping the module unpublished its code through jitmem"
    );
    let theirs = run_all(&Config::new());
    assert_eq!(ours, theirs);
    // And the values themselves (fib 20 = 6765, sum 0..=10000, squares 0..1000).
    assert_eq!(ours[4], 6765);
    assert_eq!(ours[8], 50_005_000);
    assert_eq!(ours[11], (0..1000i64).map(|i| i * i).sum::<i64>());
}

#[test]
fn unaligned_ranges_are_refused_not_widened() {
    use wasmtime::CustomCodeMemory;
    let memory = JitmemCodeMemory::new().unwrap();
    let page = memory.required_alignment();
    let buf = vec![0u8; 3 * page];
    let ptr = buf.as_ptr().wrapping_add(1);
    let err = memory.publish_executable(ptr, page).unwrap_err();
    assert!(err.to_string().contains("not aligned"), "{err}");
    assert_eq!(memory.publishes(), 0);
}
