#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blocksnap_fuzzing::ebs_rest(data));
