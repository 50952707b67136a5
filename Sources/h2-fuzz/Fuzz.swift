import Foundation
import MeshProxy

// The HTTP/2 core's fuzz target (`scripts/fuzz` builds it with libFuzzer and FUZZING). Built
// without FUZZING it replays inputs instead: each argument is a file, or a directory of them.
#if FUZZING
  @_cdecl("LLVMFuzzerTestOneInput")
  public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    HTTP2FuzzInput.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
  }

  @_silgen_name("LLVMFuzzerRunDriver")
  func runFuzzer(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
  ) -> CInt

  // SwiftPM links an executable's entry point under the name `<module>_main`; here it hands
  // the process to libFuzzer's driver.
  @_cdecl("h2_fuzz_main")
  public func fuzzMain(
    _ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?
  ) -> CInt {
    var argc = argc
    var argv = argv
    return runFuzzer(&argc, &argv) { data, size in fuzz(data, size) }
  }
#else
  @main enum Replay {
    static func main() {
      var replayed = 0
      for argument in CommandLine.arguments.dropFirst() {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
          FileHandle.standardError.write(Data("h2-fuzz: \(argument): no such file\n".utf8))
          exit(1)
        }
        let files =
          isDirectory.boolValue
          ? ((try? FileManager.default.contentsOfDirectory(atPath: argument)) ?? []).sorted().map {
            "\(argument)/\($0)"
          } : [argument]
        for file in files {
          guard let data = FileManager.default.contents(atPath: file) else { continue }
          HTTP2FuzzInput.run([UInt8](data))
          replayed += 1
        }
      }
      print("replayed \(replayed) inputs")
    }
  }
#endif
