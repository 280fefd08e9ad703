//! xDS client at scale with mimalloc as the global allocator: the same timings as `xds_scale`,
//! to tell the client's own cost from glibc malloc's deferred work after a large load.
//!
//! `cargo bench --bench xds_scale_mimalloc` (`XDS_SCALE_SERVICES=10000` for 100,000 clusters).

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/xds_scale.rs"]
mod scale;

fn main() {
    scale::run("mimalloc", None);
}
