"""Checks Trellis' dynamic codec against Python's protobuf (json_format and the wire codec).

Reads a FileDescriptorSet and a JSON-lines file of cases written by the Swift test, each with
the input JSON and what Trellis made of it (binary as base64, JSON text). For every case:
  - Python parses the input JSON; the message must equal Python's decoding of Trellis' bytes;
  - Python's JSON for the message must equal Trellis' JSON (compared as JSON values);
and it writes back Python's bytes and JSON so the Swift side can check the other direction.
Exits 1 and names each mismatch if any.
"""
import base64
import json
import sys

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory


def main(protoset_path, cases_path, out_path):
    fds = descriptor_pb2.FileDescriptorSet.FromString(open(protoset_path, "rb").read())
    pool = descriptor_pool.DescriptorPool()
    for f in fds.file:
        pool.Add(f)
    failures = []
    results = []
    for line in open(cases_path):
        case = json.loads(line)
        cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(case["type"]))
        expected = json_format.Parse(case["input"], cls(), descriptor_pool=pool)
        ours = cls.FromString(base64.b64decode(case["swift_bin"]))
        if ours != expected:
            failures.append(f"{case['name']}: bytes differ\n  python: {expected}\n  trellis: {ours}")
        python_json = json_format.MessageToJson(expected, descriptor_pool=pool)
        if json.loads(python_json) != json.loads(case["swift_json"]):
            failures.append(
                f"{case['name']}: JSON differs\n  python: {python_json}\n  trellis: {case['swift_json']}")
        results.append({
            "name": case["name"],
            "python_bin": base64.b64encode(expected.SerializeToString(deterministic=True)).decode(),
            "python_json": python_json,
        })
    with open(out_path, "w") as out:
        for r in results:
            out.write(json.dumps(r) + "\n")
    for f in failures:
        print(f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
