import ShopSupport
import Testing

@Suite struct ResourceIDTests {
  @Test func idsArePrefixedAndEveryCharacterIsRandom() {
    let alphabet = Set("0123456789abcdefghjkmnpqrstvwxyz")
    var seen = Set<String>()
    var byPosition = [Set<Character>](repeating: [], count: 16)
    for _ in 0..<10_000 {
      let id = ResourceID.make(prefix: "pay")
      #expect(id.hasPrefix("pay_") && id.count == 20, "\(id)")
      for (position, character) in id.dropFirst(4).enumerated() {
        #expect(alphabet.contains(character), "\(id)")
        byPosition[position].insert(character)
      }
      seen.insert(id)
    }
    #expect(seen.count == 10_000)
    // Each of the 16 characters carries 5 bits of its own: every letter turns up at every place.
    #expect(byPosition.allSatisfy { $0 == alphabet }, "\(byPosition.map(\.count))")
  }
}
