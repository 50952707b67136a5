extension StringProtocol {
  /// The text without leading and trailing whitespace, as the state files (a token, a
  /// version) are read; FoundationEssentials has no `trimmingCharacters(in:)`.
  var trimmedOfWhitespace: String {
    String(drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
  }
}
