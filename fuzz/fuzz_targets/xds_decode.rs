//! Each xDS decoder and validator: the first byte picks the resource type, the rest is the
//! resource's protobuf bytes.
#![no_main]

use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use mesh_xds_client::ResourceType;
use mesh_xds_client::decode::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    let ty = ResourceType::ALL[usize::from(pick) % ResourceType::ALL.len()];
    let any = Any {
        type_url: ty.type_url().to_string(),
        value: value.to_vec(),
    };
    let _ = decode(ty, &any);
});
