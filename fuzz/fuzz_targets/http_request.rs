#![no_main]
// See apptheus::fuzzing::http_request for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::http_request(data);
});
