#![no_main]
// See apptheus::fuzzing::http_headers for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::http_headers(data);
});
