//! A guest's split ring, taken whole from the input, drained by the device.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ocidisk::fuzzing::virtqueue(data);
});
