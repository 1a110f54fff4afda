//! An overlay file's bytes, opened; what opens keeps a flushed write.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ocidisk::fuzzing::overlay_file(data);
});
