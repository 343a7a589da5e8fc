#![no_main]
//! `swiotlb_tests::fuzz::audit::dma_batch`: see `tests/src/fuzz/`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| swiotlb_tests::fuzz::audit::dma_batch(data));
