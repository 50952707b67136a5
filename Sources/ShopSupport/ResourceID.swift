/// Makes resource identifiers such as `usr_5f3k9q2m7x1c8v4b`: a type prefix and 16 random
/// characters from a lower-case alphabet without look-alikes (80 bits of randomness).
public enum ResourceID {
  private static let alphabet = Array("0123456789abcdefghjkmnpqrstvwxyz".utf8)

  public static func make(prefix: String) -> String {
    // Two draws from the system's generator (each one a system call) give the 80 bits: 5 for
    // each character.
    var generator = SystemRandomNumberGenerator()
    var bits = (generator.next() as UInt64, generator.next() as UInt64)
    var suffix = [UInt8](repeating: 0, count: 16)
    for index in 0..<16 {
      let word = index < 12 ? bits.0 : bits.1
      suffix[index] = alphabet[Int(word & 31)]
      if index < 12 { bits.0 >>= 5 } else { bits.1 >>= 5 }
    }
    return prefix + "_" + String(decoding: suffix, as: UTF8.self)
  }
}
