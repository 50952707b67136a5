/// Makes resource identifiers such as `usr_5f3k9q2m7x1c8v4b`: a type prefix and 16 random
/// characters from a lower-case alphabet without look-alikes (80 bits of randomness).
public enum ResourceID {
  private static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz")

  public static func make(prefix: String) -> String {
    var generator = SystemRandomNumberGenerator()
    let suffix = (0..<16).map { _ in alphabet[Int(generator.next(upperBound: UInt32(32)))] }
    return prefix + "_" + String(suffix)
  }
}
