/// The serialized `google.protobuf.FileDescriptorSet` of every proto file in this module, with
/// their imports: what server reflection serves and what the dynamic codec reads.
public enum MeshProtosDescriptors {
  /// `proto/grpc/{health,reflection}` and `proto/google/api`, with imports.
  public static var fileDescriptorSet: [UInt8] { PackageResources.mesh_protoset }
}
