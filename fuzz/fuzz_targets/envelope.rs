//! Fuzz target `envelope`: the property checks of `berth_verify::fuzzing::envelope` (every
//! signature envelope, payload, key and manifest parser of berth-verify).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_verify::fuzzing::envelope(data));
