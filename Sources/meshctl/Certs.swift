import ArgumentParser

/// `meshctl certs`: the mesh's certificate authority.
struct Certs: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Create the mesh CA, issue workload certificates, inspect certificates.",
    subcommands: [Init.self, Issue.self, Request.self, Inspect.self])
}
