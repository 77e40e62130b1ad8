#![no_main]
// See apptheus::fuzzing::socket_peer for what this covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    apptheus::fuzzing::socket_peer(data);
});
