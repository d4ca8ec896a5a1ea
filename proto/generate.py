"""Regenerate the Python code of the `.proto` files in this folder into `node/gen/`.

protoc writes imports relative to the proto root (`from ingestor.v1 import x_pb2`); the generated
modules live in the `node.gen` package, so those imports are rewritten. `--check` regenerates into
a temporary folder and fails when the committed code differs (stale or edited by hand).
"""

from __future__ import annotations

import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "node" / "gen"
PACKAGE = "node.gen"
IMPORT_RE = re.compile(r"^from (ingestor\.v1|prometheus|ingestor) import ", re.MULTILINE)


def generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for py in out.rglob("*.py*"):
        text = py.read_text()
        new = IMPORT_RE.sub(lambda m: f"from {PACKAGE}.{m.group(1)} import ", text)
        if new != text:
            py.write_text(new)
    for d in [out, *[p for p in out.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()


def differences(a: Path, b: Path) -> list[str]:
    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    diff = sorted(str(p) for p in files_a ^ files_b)
    for p in sorted(files_a & files_b):
        if not filecmp.cmp(a / p, b / p, shallow=False):
            diff.append(str(p))
    return diff


def main() -> int:
    if "--check" in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "gen"
            generate(fresh)
            diff = differences(fresh, OUT_DIR)
        if diff:
            print("generated protobuf code is stale; run `make proto`:", *diff, sep="\n  ")
            return 1
        print("generated protobuf code is up to date")
        return 0
    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    generate(OUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
