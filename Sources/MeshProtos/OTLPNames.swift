/// Shorter names for the OTLP messages the mesh passes around.
public typealias OTLPExportRequest =
  Opentelemetry_Proto_Collector_Trace_V1_ExportTraceServiceRequest
public typealias OTLPResourceSpans = Opentelemetry_Proto_Trace_V1_ResourceSpans
public typealias OTLPSpan = Opentelemetry_Proto_Trace_V1_Span
