#![no_main]
//! `swiotlb_tests::fuzz::evidence::crl`: see `tests/src/fuzz/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| swiotlb_tests::fuzz::evidence::crl(data));
