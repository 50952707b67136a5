"""Generates Python stubs with grpcio-tools into a folder and puts it on sys.path."""
import os
import sys

import grpc_tools
from grpc_tools import protoc


def generate(out_dir, include_dirs, protos):
    os.makedirs(out_dir, exist_ok=True)
    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["grpc_tools.protoc", f"-I{well_known}"]
    args += [f"-I{d}" for d in include_dirs]
    args += [f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + protos
    if protoc.main(args) != 0:
        raise SystemExit(f"grpcio-tools could not compile {protos}")
    sys.path.insert(0, out_dir)
