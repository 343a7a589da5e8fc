#![no_main]
//! `swiotlb_tests::fuzz::rings::chains`: see `tests/src/fuzz/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| swiotlb_tests::fuzz::rings::chains(data));
