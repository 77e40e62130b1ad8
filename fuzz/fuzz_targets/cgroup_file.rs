#![no_main]
// See apptheus::fuzzing::cgroup_file for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::cgroup_file(data);
});
