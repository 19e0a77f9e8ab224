"""Generate Python code and Envoy's descriptor set from protos/ (`make gen`, `python -m stack.codegen`).

Output: posmesh/<svc>/v1/{*_pb2.py,*_pb2_grpc.py,*.pyi,__init__.py} (git-ignored),
build/posmesh.pb (every import included, with source info, for grpc_json_transcoder) and the API
documents generated from it, build/api/ (stack.api_docs: OpenAPI, AsyncAPI, the explorer).
"""

from __future__ import annotations

import shutil
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
DESCRIPTOR_SET = ROOT / "build" / "posmesh.pb"
API_DIR = ROOT / "build" / "api"
# Not imported by our protos, but the transcoder needs them in the descriptor set to print
# google.rpc.Status details (ErrorInfo) as JSON.
EXTRA_INPUTS = ("google/rpc/status.proto", "google/rpc/error_details.proto")


def googleapis_root() -> Path:
    """The site-packages folder holding googleapis-common-protos' google/api/*.proto."""
    import google.api.annotations_pb2 as annotations

    return Path(annotations.__file__).resolve().parent.parent.parent


def grpc_tools_include() -> Path:
    return Path(str(resources.files("grpc_tools") / "_proto"))


def proto_files() -> list[str]:
    return sorted(str(path.relative_to(PROTOS)) for path in PROTOS.rglob("*.proto"))


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc

    includes = [f"-I{PROTOS}", f"-I{googleapis_root()}", f"-I{grpc_tools_include()}"]
    if protoc.main(["grpc_tools.protoc", *includes, *args]) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")


def generate() -> None:
    files = proto_files()
    _protoc([f"--python_out={ROOT}", f"--pyi_out={ROOT}", f"--grpc_python_out={ROOT}", *files])
    for proto in files:
        # Only the git-ignored v1 folders get a marker; posmesh/<svc>/ stays a namespace package
        # so nothing generated lands outside the ignored paths.
        init = ROOT / Path(proto).parent / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from protos/ by stack.codegen; never edited."""\n')
    DESCRIPTOR_SET.parent.mkdir(parents=True, exist_ok=True)
    _protoc(
        [
            "--include_imports",
            "--include_source_info",
            f"--descriptor_set_out={DESCRIPTOR_SET}",
            *files,
            *EXTRA_INPUTS,
        ]
    )
    from stack import api_docs  # needs the code generated above

    api_docs.write(API_DIR, DESCRIPTOR_SET)


def is_current() -> bool:
    """Whether generated code and the descriptor set are newer than every proto."""
    if not DESCRIPTOR_SET.exists():
        return False
    newest = max(path.stat().st_mtime for path in PROTOS.rglob("*.proto"))
    outputs = [DESCRIPTOR_SET] + [
        ROOT / proto.replace(".proto", "_pb2.py") for proto in proto_files()
    ]
    return all(out.exists() and out.stat().st_mtime >= newest for out in outputs)


def ensure_generated() -> None:
    if not is_current():
        generate()


def copy_googleapis(dest: Path) -> None:
    """Copy googleapis' google/api and google/rpc protos where buf.yaml expects its second module
    (buf cannot reach the Buf Schema Registry from here)."""
    for folder in ("api", "rpc"):
        target = dest / "google" / folder
        target.mkdir(parents=True, exist_ok=True)
        for proto in (googleapis_root() / "google" / folder).glob("*.proto"):
            shutil.copyfile(proto, target / proto.name)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--googleapis-into"] and len(argv) == 2:
        copy_googleapis(Path(argv[1]))
        return
    if argv:
        raise SystemExit("usage: python -m stack.codegen [--googleapis-into DIR]")
    generate()
    print(f"generated {len(proto_files())} protos, {DESCRIPTOR_SET.relative_to(ROOT)} and "
          f"{API_DIR.relative_to(ROOT)}/", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
