//! A manifest and config as a registry serves them, opened and composed.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ocidisk::fuzzing::oci_image(data);
});
