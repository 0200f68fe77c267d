//! Fuzz target `layer`: the property checks of `berth_catalog::fuzzing::layer` (the tar
//! reader, the three decoders, every cataloger and the merge).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| berth_catalog::fuzzing::layer(data));
