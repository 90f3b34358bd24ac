"""Regenerate `client/tether/v1` from `protos/` (the only way that code is written).

Usage: python scripts/generate_protos.py [--check]

With --check, generate into a temporary folder and exit 1 if the checked-in
code differs (CI runs this).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
THIRD_PARTY = ROOT / "third_party" / "googleapis"
OUTPUT = ROOT / "client"
PACKAGE_DIR = Path("tether") / "v1"
WKT_INCLUDE = Path(grpc_tools.__file__).parent / "_proto"
DESCRIPTOR_SET = "descriptor_set.binpb"


def generate(out_root: Path) -> None:
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{THIRD_PARTY}",
        f"-I{WKT_INCLUDE}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        # With comments, for server reflection (so `grpcurl describe` shows the docs).
        f"--descriptor_set_out={out_root / PACKAGE_DIR / DESCRIPTOR_SET}",
        "--include_imports",
        "--include_source_info",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    init = out_root / PACKAGE_DIR / "__init__.py"
    init.write_text('"""Generated wire types and stubs of the tether.v1 API. Do not edit."""\n')
    # PEP 561: without this marker, mypy outside the repo ignores the .pyi stubs and every
    # message a caller builds or gets back is Any. `tether` is a namespace package, so the
    # marker goes in each leaf package (tether/client has its own).
    (out_root / PACKAGE_DIR / "py.typed").write_text("")


def differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    diffs = [*cmp.left_only, *cmp.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    return sorted(diffs + mismatch + errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the checked-in code is stale")
    check = parser.parse_args().check
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        target = OUTPUT / PACKAGE_DIR
        if check:
            stale = differences(fresh / PACKAGE_DIR, target) if target.exists() else ["(missing)"]
            if stale:
                print(f"generated code in {target} is stale: {', '.join(stale)}", file=sys.stderr)
                print("run: python scripts/generate_protos.py", file=sys.stderr)
                return 1
            print("generated code is fresh")
            return 0
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(fresh / PACKAGE_DIR, target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
