import ArgumentParser

/// `meshctl certs`: the mesh's certificate authority.
struct Certs: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Create the mesh CA, issue and inspect certificates, rotate the issuer and the root.",
    subcommands: [
      Init.self, Issue.self, Request.self, Inspect.self, Status.self, Rotate.self, RotateCA.self,
      SignIssuer.self,
    ])
}
