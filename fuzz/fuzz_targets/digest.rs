//! Fuzz target `digest`: the property checks of `berth_oci::fuzzing::digest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_oci::fuzzing::digest(data));
