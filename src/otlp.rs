//! OTLP export (feature `otlp`): mesh's trace spans through a tracing-opentelemetry layer
//! whose spans carry the trace and span ids mesh propagates in `traceparent` and B3, exported
//! over OTLP/gRPC in batches ([`layer`]); and Istio's metrics, under the same names and labels
//! as the Prometheus text, pushed over OTLP/gRPC ([`push_metrics`], [`push_metrics_once`]).
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

/// Istio's metrics of `telemetry` as one OTLP export (cumulative, since the metrics started),
/// under the same names and labels as the Prometheus text.
pub fn metrics_request(
    telemetry: &mesh_tower::telemetry::Telemetry,
    service_name: &str,
) -> opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value,
    };
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as PbResource;

    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or_default()
    };
    let (start, now) = (
        nanos(telemetry.started()),
        nanos(std::time::SystemTime::now()),
    );
    let text = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_string())),
        }),
        ..Default::default()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let points = telemetry.points();
    let attrs = |p: &mesh_tower::telemetry::SeriesPoint| -> Vec<KeyValue> {
        p.labels.iter().map(|(k, v)| text(k, v)).collect()
    };
    let sum = |name: &str, values: Vec<(Vec<KeyValue>, u64)>| Metric {
        name: name.to_string(),
        data: Some(metric::Data::Sum(Sum {
            data_points: values
                .into_iter()
                .map(|(attributes, n)| NumberDataPoint {
                    attributes,
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsInt(
                        i64::try_from(n).unwrap_or(i64::MAX),
                    )),
                    ..Default::default()
                })
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        })),
        ..Default::default()
    };
    let histogram = |name: &str,
                     unit: &str,
                     pick: &dyn Fn(
        &mesh_tower::telemetry::SeriesPoint,
    ) -> &mesh_tower::telemetry::HistogramPoint| Metric {
        name: name.to_string(),
        unit: unit.to_string(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: points
                .iter()
                .map(|p| {
                    let h = pick(p);
                    HistogramDataPoint {
                        attributes: attrs(p),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.count,
                        sum: Some(h.sum),
                        bucket_counts: h.counts.clone(),
                        explicit_bounds: h.bounds.to_vec(),
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: cumulative,
        })),
        ..Default::default()
    };
    let grpc: Vec<&mesh_tower::telemetry::SeriesPoint> =
        points.iter().filter(|p| p.messages.is_some()).collect();
    let mut metrics = vec![
        sum(
            "istio_requests_total",
            points.iter().map(|p| (attrs(p), p.requests)).collect(),
        ),
        histogram("istio_request_duration_milliseconds", "ms", &|p| {
            &p.duration_ms
        }),
        histogram("istio_request_bytes", "By", &|p| &p.request_bytes),
        histogram("istio_response_bytes", "By", &|p| &p.response_bytes),
    ];
    if !grpc.is_empty() {
        let messages = |pick: fn((u64, u64)) -> u64| -> Vec<(Vec<KeyValue>, u64)> {
            grpc.iter()
                .map(|p| (attrs(p), p.messages.map(pick).unwrap_or_default()))
                .collect()
        };
        metrics.push(sum("istio_request_messages_total", messages(|m| m.0)));
        metrics.push(sum("istio_response_messages_total", messages(|m| m.1)));
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(PbResource {
                attributes: vec![text("service.name", service_name)],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "mesh".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// Sends Istio's metrics of `telemetry` to the OTLP/gRPC collector at `endpoint` once.
pub async fn push_metrics_once(
    telemetry: &mesh_tower::telemetry::Telemetry,
    endpoint: &str,
    service_name: &str,
) -> Result<(), OtlpError> {
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    let fail = |e: &dyn std::fmt::Display| OtlpError {
        endpoint: endpoint.to_string(),
        message: e.to_string(),
    };
    let mut client = MetricsServiceClient::connect(endpoint.to_string())
        .await
        .map_err(|e| fail(&e))?;
    client
        .export(metrics_request(telemetry, service_name))
        .await
        .map_err(|e| fail(&e))?;
    Ok(())
}

/// Sends Istio's metrics of `telemetry` to the collector at `endpoint` every `interval`
/// until the task is aborted; a failed export is logged and retried at the next tick.
pub fn push_metrics(
    telemetry: std::sync::Arc<mesh_tower::telemetry::Telemetry>,
    endpoint: String,
    service_name: String,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = push_metrics_once(&telemetry, &endpoint, &service_name).await {
                tracing::warn!("{e}");
            }
        }
    })
}
