;; WasmHello: the smallest WASM controller, a core module written against the canonical ABI of
;; the magic:controller world (wit/magic-controller.wit). The runtime componentizes it at deploy.
;; Build: `magic` accepts only `controller.wasm`; build.sh turns this file into it (the tests use
;; the `wat` crate instead).
;;
;; execute(input) logs one line and returns {"echo": <input>}.
(module
  (import "magic:controller/log" "log" (func $log (param i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))

  ;; Bump allocator the host uses to hand strings in (never frees: the instance lives for one
  ;; execution).
  (func $alloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (local.set $have (i32.mul (memory.size) (i32.const 65536)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (local.get $have)) (i32.const 16)) (i32.const 1)))
              (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))

  (data (i32.const 16) "info")
  (data (i32.const 32) "hello from wasm")
  (data (i32.const 64) "{\"runtime\":\"wasm\"}")
  (data (i32.const 96) "{\"echo\":")

  ;; execute(input: string) -> result<string, failure>: returns a pointer to the result area
  ;; (discriminant at +0, string pointer at +4, length at +8).
  (func (export "execute") (param $in i32) (param $len i32) (result i32)
    (local $out i32) (local $ret i32)
    (call $log (i32.const 16) (i32.const 4) (i32.const 32) (i32.const 15) (i32.const 64) (i32.const 18))
    ;; out = {"echo": + input + }
    (local.set $out (call $alloc (i32.const 0) (i32.const 0) (i32.const 1) (i32.add (local.get $len) (i32.const 9))))
    (memory.copy (local.get $out) (i32.const 96) (i32.const 8))
    (memory.copy (i32.add (local.get $out) (i32.const 8)) (local.get $in) (local.get $len))
    (i32.store8 (i32.add (local.get $out) (i32.add (local.get $len) (i32.const 8))) (i32.const 125))
    (local.set $ret (call $alloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 20)))
    (i32.store8 (local.get $ret) (i32.const 0))
    (i32.store offset=4 (local.get $ret) (local.get $out))
    (i32.store offset=8 (local.get $ret) (i32.add (local.get $len) (i32.const 9)))
    (local.get $ret))
)
