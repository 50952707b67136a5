import MeshDashboard
import Testing

/// The service graph's layout at the size the page draws it (1280×800): no two boxes (each
/// with its label inside) overlap, every one is on the canvas, callers sit left of what they
/// call, and labels fit their boxes.
@Suite struct GraphLayoutTests {
  static let shop: [(from: String, to: String)] = [
    ("gateway", "users"), ("gateway", "orders"), ("gateway", "payments"), ("orders", "payments"),
    ("users", "events"), ("orders", "events"),
  ]

  /// 50 services: a gateway, 9 front services it calls, 40 back ones each called by one or
  /// two of them, and a few calls that close cycles.
  static let fifty: [(from: String, to: String)] = {
    var edges: [(from: String, to: String)] = []
    for front in 0..<9 {
      edges.append(("gateway", "frontend-service-\(front)"))
      edges.append(("frontend-service-\(front)", "backend-\((front * 7) % 40)"))
    }
    for back in 0..<40 {
      edges.append(("frontend-service-\(back % 9)", "backend-\(back)"))
      if back % 7 == 0 { edges.append(("backend-\(back)", "frontend-service-\(back % 9)")) }
    }
    return edges
  }()

  func check(_ layout: GraphLayout) {
    for (index, box) in layout.boxes.enumerated() {
      #expect(box.x >= 0 && box.y >= 0, "\(box)")
      #expect(box.x + box.width <= layout.width && box.y + box.height <= layout.height, "\(box)")
      let text = Double(box.label.count) * GraphLayout.characterWidth
      #expect(text <= box.width, "\(box.label) does not fit \(box.width)")
      for other in layout.boxes[(index + 1)...] {
        #expect(!box.overlaps(other), "\(box.name) overlaps \(other.name)")
      }
    }
  }

  @Test func theShopIsDrawnCallersFirst() {
    let layout = GraphLayout(services: ["users"], edges: Self.shop)
    #expect(
      layout.boxes.map(\.name).sorted() == ["events", "gateway", "orders", "payments", "users"])
    check(layout)
    let x = Dictionary(uniqueKeysWithValues: layout.boxes.map { ($0.name, $0.x + $0.width / 2) })
    for edge in Self.shop { #expect(x[edge.from]! < x[edge.to]!, "\(edge)") }
    #expect(layout.boxes.allSatisfy { $0.label == $0.name })
  }

  @Test func fiftyServicesFitWithoutOverlap() {
    let layout = GraphLayout(services: [], edges: Self.fifty)
    #expect(layout.boxes.count == 50)
    check(layout)
  }

  @Test func aLongChainAndAWideFanStillFit() {
    let chain = (0..<30).map { (from: "service-number-\($0)", to: "service-number-\($0 + 1)") }
    check(GraphLayout(services: [], edges: chain))
    let fan = (0..<120).map { (from: "gateway", to: "svc-\($0)") }
    let wide = GraphLayout(services: [], edges: fan)
    #expect(wide.boxes.count == 121)
    check(wide)
    // The same input, the same drawing.
    #expect(GraphLayout(services: [], edges: fan) == wide)
  }
}
