//! xDS client at scale with the system allocator, heap figures from dhat.
//!
//! `cargo bench --bench xds_scale` (`XDS_SCALE_SERVICES=10000` for 100,000 clusters); the
//! report is described in `common/xds_scale.rs`.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[path = "common/xds_scale.rs"]
mod scale;

fn main() {
    scale::run("system allocator", Some(dhat_probe));
}

/// Heap figures from dhat (which must be the global allocator).
pub fn dhat_probe(f: &mut dyn FnMut()) -> (usize, usize) {
    let _profiler = dhat::Profiler::builder().testing().build();
    let before = dhat::HeapStats::get().curr_bytes;
    f();
    let stats = dhat::HeapStats::get();
    (
        stats.curr_bytes.saturating_sub(before),
        stats.max_bytes.saturating_sub(before),
    )
}
