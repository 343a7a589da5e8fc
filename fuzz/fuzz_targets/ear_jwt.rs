#![no_main]
//! `swiotlb_tests::fuzz::evidence::ear_jwt`: see `tests/src/fuzz/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| swiotlb_tests::fuzz::evidence::ear_jwt(data));
