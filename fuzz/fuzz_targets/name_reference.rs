//! Fuzz target `name_reference`: the property checks of `berth_oci::fuzzing::name_reference`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_oci::fuzzing::name_reference(data));
