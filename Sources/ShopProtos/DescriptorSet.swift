/// The serialized `google.protobuf.FileDescriptorSet` of the shop's proto files, with their
/// imports: what the shop services serve by reflection and what the gateway transcodes with.
public enum ShopProtosDescriptors {
  /// `proto/shop/v1`, with imports.
  public static var fileDescriptorSet: [UInt8] { PackageResources.shop_protoset }
}
