//! Fuzz target `manifest`: the property checks of `berth_oci::fuzzing::manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_oci::fuzzing::manifest(data));
