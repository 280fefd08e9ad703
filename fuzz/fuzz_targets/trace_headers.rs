//! Trace headers: lines `name: value` read as a request's headers. Whatever parses must write
//! back to what parses to the same context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_core::telemetry::trace_context::TraceContext;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let headers: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v))
        .collect();
    let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let Ok(Some(ctx)) = TraceContext::extract(get) else {
        return;
    };
    let tp = ctx.traceparent();
    let back = TraceContext::from_traceparent(std::str::from_utf8(&tp).unwrap()).unwrap();
    assert_eq!((back.trace_id, back.span_id), (ctx.trace_id, ctx.span_id));
    let b3 = ctx.b3(Some(1));
    let back = TraceContext::from_b3(b3.as_str()).unwrap().unwrap();
    assert_eq!((back.trace_id, back.span_id), (ctx.trace_id, ctx.span_id));
});
