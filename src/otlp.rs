//! OTLP export of mesh's trace spans (feature `otlp`): a tracing-opentelemetry layer whose
//! spans carry the trace and span ids mesh propagates in `traceparent` and B3, exported over
//! OTLP/gRPC in batches.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::layer::SubscriberExt;
//! let (layer, provider) = mesh::otlp::layer("http://otel-collector:4317", "ui", 1.0)?;
//! tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
//! // ... serve ...
//! provider.shutdown()?; // flushes what is batched
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetryLayer;

pub use mesh_tower::telemetry::trace::otel::MeshIdGenerator;

/// Why the exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter to {endpoint}: {message}")]
pub struct OtlpError {
    /// The collector's address.
    pub endpoint: String,
    /// What failed.
    pub message: String,
}

/// A layer exporting mesh's spans (and any other `tracing` span of the process) to the OTLP
/// collector at `endpoint` as service `service_name`, and its provider (shut it down to flush).
/// `sampling_percent` samples the traces this process starts as the
/// [`mesh_tower::telemetry::Tracer`] of the same percentage does, so that exported traces and
/// propagated sampling flags agree; continued traces follow their caller's flag. Must run
/// inside a tokio runtime (the gRPC client needs one).
pub fn layer<S>(
    endpoint: &str,
    service_name: &str,
    sampling_percent: f64,
) -> Result<
    (
        OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    ),
    OtlpError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| OtlpError {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let ratio = if sampling_percent.is_nan() {
        0.0
    } else {
        (sampling_percent / 100.0).clamp(0.0, 1.0)
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(MeshIdGenerator::default())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_string())
                .build(),
        )
        .build();
    let tracer = provider.tracer("mesh");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}
