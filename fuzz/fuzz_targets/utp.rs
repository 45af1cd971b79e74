#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kp_torrent_tests::fuzz::utp(data));
