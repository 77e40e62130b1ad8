#![no_main]
// See apptheus::fuzzing::proc_file for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::proc_file(data);
});
