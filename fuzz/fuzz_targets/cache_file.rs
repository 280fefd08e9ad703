//! The last-known-good cache file, and every resource in it through its decoder (as a
//! cold start from a damaged or planted file would).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_xds_client::decode::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(resources) = mesh_xds_client::cache::parse(data) {
        for (ty, _, any) in resources {
            let _ = decode(ty, &any);
        }
    }
});
