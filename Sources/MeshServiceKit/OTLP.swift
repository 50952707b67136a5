import MeshProtos

extension OTLPResourceSpans {
  /// The spans it carries.
  public var spanCount: Int { scopeSpans.reduce(0) { $0 + $1.spans.count } }
}
