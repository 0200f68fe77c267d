//! Fuzz target `content_range`: the property checks of `berth_oci::fuzzing::content_range`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_oci::fuzzing::content_range(data));
