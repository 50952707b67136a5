/// Where the service graph's nodes go on the page: a layered drawing, callers left of the
/// services they call, computed here so that its one promise — no two nodes (each with its
/// label inside) overlap, and every one is on the canvas — can be checked by a plain test.
///
/// Each service gets a rank, the length of the longest chain of callers above it (calls that
/// close a cycle are drawn backwards and do not count). A rank is a column; a column with more
/// nodes than the canvas holds is split into several. Within a column, nodes are ordered by
/// the mean position of their callers (a barycenter sweep), which keeps most edges short and
/// uncrossed. Labels are cut, with an ellipsis, to what their box holds; the page shows the
/// whole name on hover and on the service's page.
public struct GraphLayout: Sendable, Equatable {
  public struct Box: Sendable, Equatable {
    public var name: String
    /// The label drawn in the box: the name, cut to fit.
    public var label: String
    /// The box's left, top, width and height, in pixels.
    public var x: Double
    public var y: Double
    public var width: Double
    public var height: Double

    public func overlaps(_ other: Box) -> Bool {
      x < other.x + other.width && other.x < x + width && y < other.y + other.height
        && other.y < y + height
    }
  }

  public var width: Double
  public var height: Double
  public var boxes: [Box]

  /// The width of a label's character: the page draws labels in a 12 px monospace font, whose
  /// characters are 0.6 em wide.
  public static let characterWidth = 7.2
  public static let boxHeight = 36.0
  static let padding = 12.0
  static let margin = 20.0
  static let verticalGap = 14.0
  static let horizontalGap = 40.0
  static let minimumBoxWidth = 64.0

  public init(
    services: [String], edges: [(from: String, to: String)], width: Double = 1280,
    height: Double = 800
  ) {
    self.width = width
    self.height = height
    let names = Array(Set(services + edges.flatMap { [$0.from, $0.to] })).sorted()
    guard !names.isEmpty else {
      boxes = []
      return
    }
    let callers = Self.callers(names, edges)
    var rank = Self.ranks(names, callers)
    // Columns by rank, each split to what the canvas holds; with more columns than fit side by
    // side, neighbouring ranks share columns.
    let fits = max(
      1, Int((height - 2 * Self.margin + Self.verticalGap) / (Self.boxHeight + Self.verticalGap)))
    let sideBySide = max(
      1, Int((width - 2 * Self.margin) / (Self.minimumBoxWidth + Self.horizontalGap)))
    var columns = Self.columns(names, rank: rank, callers: callers, fits: fits)
    while columns.count > sideBySide, let levels = rank.values.max(), levels > 0 {
      rank = rank.mapValues { $0 * (levels - 1) / levels }
      columns = Self.columns(names, rank: rank, callers: callers, fits: fits)
    }

    let columnWidth = (width - 2 * Self.margin) / Double(columns.count)
    let maximumBox = columnWidth - min(Self.horizontalGap, columnWidth / 3)
    var boxes: [Box] = []
    for (index, column) in columns.enumerated() {
      let centerX = Self.margin + (Double(index) + 0.5) * columnWidth
      let slot = min(
        (height - 2 * Self.margin) / Double(column.count), 3 * (Self.boxHeight + Self.verticalGap))
      let top = (height - slot * Double(column.count)) / 2
      for (row, name) in column.enumerated() {
        let label = Self.cut(name, toFit: maximumBox - 2 * Self.padding)
        let boxWidth = min(
          maximumBox, Double(label.count) * Self.characterWidth + 2 * Self.padding)
        boxes.append(
          Box(
            name: name, label: label, x: centerX - boxWidth / 2,
            y: top + Double(row) * slot + (slot - Self.boxHeight) / 2, width: boxWidth,
            height: Self.boxHeight))
      }
    }
    // The drawing is as tall as what it holds (at most `height`): no band of empty canvas
    // above and below a small mesh.
    let top = boxes.map(\.y).min() ?? Self.margin
    let bottom = boxes.map { $0.y + $0.height }.max() ?? height
    if top > Self.margin {
      for index in boxes.indices { boxes[index].y -= top - Self.margin }
      self.height = min(height, bottom - top + 2 * Self.margin)
    }
    self.boxes = boxes
  }

  /// The nodes by column, left to right: by rank, each rank's nodes ordered by the mean
  /// position of their callers (then by name) and split into columns of `fits` at most.
  static func columns(
    _ names: [String], rank: [String: Int], callers: [String: [String]], fits: Int
  ) -> [[String]] {
    var columns: [[String]] = []
    var placed: [String: Double] = [:]  // a node's position within its column, 0 to 1
    for level in 0...(rank.values.max() ?? 0) {
      func barycenter(_ name: String) -> Double {
        let known = (callers[name] ?? []).compactMap { placed[$0] }
        return known.isEmpty ? 0.5 : known.reduce(0, +) / Double(known.count)
      }
      let members = names.filter { rank[$0] == level }.sorted {
        (barycenter($0), $0) < (barycenter($1), $1)
      }
      guard !members.isEmpty else { continue }
      let parts = (members.count + fits - 1) / fits
      let size = (members.count + parts - 1) / parts
      for part in 0..<parts {
        let column = Array(members[(part * size)..<min(members.count, (part + 1) * size)])
        for (index, name) in column.enumerated() {
          placed[name] = (Double(index) + 0.5) / Double(column.count)
        }
        columns.append(column)
      }
    }
    return columns
  }

  /// `name`, or its start and an ellipsis, in at most `width` pixels.
  static func cut(_ name: String, toFit width: Double) -> String {
    let characters = max(2, Int(width / characterWidth))
    guard name.count > characters else { return name }
    return String(name.prefix(characters - 1)) + "…"
  }

  static func callers(
    _ names: [String], _ edges: [(from: String, to: String)]
  ) -> [String: [String]] {
    var callers: [String: [String]] = [:]
    for edge in edges where edge.from != edge.to {
      callers[edge.to, default: []].append(edge.from)
    }
    return callers.mapValues { Array(Set($0)).sorted() }
  }

  /// Each node's rank: 0 for a node no one calls, else one more than its highest caller's.
  /// Calls that close a cycle (found by a walk from each node in name order) are not counted.
  static func ranks(_ names: [String], _ callers: [String: [String]]) -> [String: Int] {
    var rank: [String: Int] = [:]
    var visiting: Set<String> = []
    func visit(_ name: String) -> Int {
      if let known = rank[name] { return known }
      visiting.insert(name)
      var level = 0
      for caller in callers[name] ?? [] where !visiting.contains(caller) {
        level = max(level, visit(caller) + 1)
      }
      visiting.remove(name)
      rank[name] = level
      return level
    }
    for name in names { _ = visit(name) }
    return rank
  }
}
