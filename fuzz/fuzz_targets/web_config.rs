#![no_main]
// See apptheus::fuzzing::web_config for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::web_config(data);
});
