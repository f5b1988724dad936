#![no_main]
include!("../harness.rs");

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::pth_bytes(data));
