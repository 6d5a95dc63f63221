"""What a serialized computation is, for a person deciding whether to run it.

`summarize(data)` reads serialized bytes without running anything and reports their SHA-256
(the hash a silo pins), the computation's name and type signature, every TensorFlow op its
graphs use with counts, the ops the default allowlist refuses, and the size of its constants.

    python -m fedsim.core.review work.bin [more.bin ...]

Example::

    summary = fedsim.core.review.summarize(fedsim.serialize_computation(process.next))
    print(summary.format())
"""

from __future__ import annotations

import argparse
import collections
import sys
from typing import Mapping, Optional

import attrs

from fedsim.core import op_allowlist, serialization
from fedsim.core.errors import SerializationError

__all__ = ["ComputationSummary", "summarize", "main"]


@attrs.frozen
class ComputationSummary:
    """The reviewable facts of serialized bytes (see the module docstring)."""

    sha256: str
    size: int
    kind: str
    name: str
    type_signature: str
    graphs: int
    ops: Mapping[str, int]
    refused_ops: tuple
    constant_bytes: int
    problem: Optional[str] = None  # why the bytes do not deserialize, if they do not

    def format(self) -> str:
        lines = [
            f"sha256:    {self.sha256}",
            f"size:      {self.size} bytes, {self.graphs} TensorFlow graph(s), {self.constant_bytes} bytes of constants",
            f"name:      {self.name} ({self.kind} computation)",
            f"type:      {self.type_signature}",
            f"refused:   {', '.join(self.refused_ops) if self.refused_ops else 'none (every op is in the default allowlist)'}",
        ]
        if self.problem:
            lines.append(f"problem:   {self.problem}")
        lines.append(f"ops ({sum(self.ops.values())} nodes, {len(self.ops)} kinds):")
        family_of = op_allowlist.DEFAULT_OP_ALLOWLIST.family_of
        for op, count in sorted(self.ops.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  {count:6d}  {op:<40s} {family_of(op) or 'NOT ALLOWED'}")
        return "\n".join(lines)


def summarize(data: bytes) -> ComputationSummary:
    """Reads `data` (untrusted) and summarizes it; raises `SerializationError` only for bytes
    that are not a fedsim computation at all (bad envelope or checksums)."""
    data = bytes(data)
    header, blobs = serialization.read_envelope(data)
    ops: collections.Counter = collections.Counter()
    constant_bytes = 0
    for index, blob in enumerate(blobs):
        graph_def = op_allowlist.parse_graph(blob, f"graph {index}")
        for op, _, _ in op_allowlist.graph_ops(graph_def):
            ops[op] += 1
        nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
        constant_bytes += sum(n.attr["value"].tensor.ByteSize() for n in nodes if n.op == "Const")
    refused = tuple(sorted(op for op in ops if not op_allowlist.DEFAULT_OP_ALLOWLIST.allows(op)))
    root = header.get("root") if isinstance(header.get("root"), dict) else {}
    kind, name, signature, problem = str(root.get("kind", "?")), str(root.get("name", "?")), "?", None
    try:  # building the objects runs nothing; allow exactly the ops present to read the type
        computation = serialization.deserialize_computation(data, allowed_ops=op_allowlist.OpAllowlist({"present": ops}))
        signature = str(computation.type_signature)
    except SerializationError as error:
        problem = str(error)
    return ComputationSummary(
        sha256=serialization.computation_hash(data), size=len(data), kind=kind, name=name,
        type_signature=signature, graphs=len(blobs), ops=dict(ops), refused_ops=refused,
        constant_bytes=constant_bytes, problem=problem,
    )


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.core.review", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="files of serialized computations")
    args = parser.parse_args(argv)
    status = 0
    for path in args.paths:
        try:
            with open(path, "rb") as stream:
                summary = summarize(stream.read())
        except (OSError, SerializationError) as error:
            sys.stderr.write(f"{path}: {error}\n")
            status = 1
            continue
        sys.stdout.write(f"== {path}\n{summary.format()}\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
