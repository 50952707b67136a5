/// A unified diff of two texts by lines (longest common subsequence), with three lines of
/// context; empty when they are equal.
public func unifiedDiff(old: String, new: String, oldName: String, newName: String) -> String {
  func lines(_ text: String) -> [String] {
    let body = text.hasSuffix("\n") ? String(text.dropLast()) : text
    return body.isEmpty
      ? [] : body.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
  }
  let a = lines(old)
  let b = lines(new)
  guard a != b else { return "" }
  // LCS table, then the edit script.
  var table = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
  for i in stride(from: a.count - 1, through: 0, by: -1) {
    for j in stride(from: b.count - 1, through: 0, by: -1) {
      table[i][j] = a[i] == b[j] ? table[i + 1][j + 1] + 1 : max(table[i + 1][j], table[i][j + 1])
    }
  }
  enum Edit { case same(String), removed(String), added(String) }
  var edits: [Edit] = []
  var i = 0
  var j = 0
  while i < a.count || j < b.count {
    if i < a.count, j < b.count, a[i] == b[j] {
      edits.append(.same(a[i]))
      i += 1
      j += 1
    } else if i < a.count, j == b.count || table[i + 1][j] >= table[i][j + 1] {
      edits.append(.removed(a[i]))
      i += 1
    } else {
      edits.append(.added(b[j]))
      j += 1
    }
  }
  // Keep changed lines and three lines of context around them.
  var keep = [Bool](repeating: false, count: edits.count)
  for (index, edit) in edits.enumerated() {
    if case .same = edit { continue }
    for k in max(0, index - 3)...min(edits.count - 1, index + 3) { keep[k] = true }
  }
  var out = "--- \(oldName)\n+++ \(newName)\n"
  var skipped = false
  for (index, edit) in edits.enumerated() {
    guard keep[index] else {
      skipped = true
      continue
    }
    if skipped { out += "@@\n" }
    skipped = false
    switch edit {
    case .same(let line): out += " \(line)\n"
    case .removed(let line): out += "-\(line)\n"
    case .added(let line): out += "+\(line)\n"
    }
  }
  return out
}
