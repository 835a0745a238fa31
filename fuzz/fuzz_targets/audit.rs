#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| dvo_operator::fuzz_targets::audit(data));
