//! A frontend's vhost-user messages, taken from the input.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ocidisk::fuzzing::protocol(data));
