//! The gRPC xDS bootstrap, as JSON text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mesh_xds_client::Bootstrap::from_json(text, "fuzz");
    }
});
