//! A layout file (TOML), parsed, validated, placed and hashed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ocidisk::fuzzing::layout_file(data);
});
