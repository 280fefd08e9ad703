//! Istio YAML into the local control plane: loading, then translation to xDS.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_control_plane::{IstioConfig, translate};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut cfg = IstioConfig::default();
        if cfg.add_text("fuzz.yaml", text).is_ok() {
            let _ = translate(&cfg);
        }
    }
});
