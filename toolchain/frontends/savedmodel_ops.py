"""What a SavedModel's graph would do besides computing: file, Python, network and debug-dump ops.

TensorFlow's own security model says a SavedModel is a program: loading it runs its resources' functions,
converting it may constant-fold its ops, and verification calls its serving function. A graph can write a
file, or read ``/etc/shadow`` and write it elsewhere, with ordinary ops. So before TensorFlow loads
anything, ``saved_model.pb`` is read as a protobuf (nothing executes) and every function that loading or
calling the model can reach is searched for such ops; a model that has any is refused unless the user
trusts it (``--trust-savedmodel``).

Written here because no library does it: TensorFlow has no "safe load", and its ``saved_model_cli scan``
only lists a handful of denylisted ops over the whole graph, without telling reachable from dead code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Ops that touch the file system, run Python, reach the network, or dump tensors to disk.
_FILE_OPS = {
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst", "FileSystemSetConfiguration",
    "Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "TFRecordReader", "TFRecordReaderV2", "LMDBReader", "ReaderRead", "ReaderReadV2",
    "ReaderReadUpTo", "ReaderReadUpToV2", "ReaderRestoreState", "ReaderRestoreStateV2",
    "TextLineDataset", "TFRecordDataset", "TFRecordDatasetV2", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "LMDBDataset", "ExperimentalLMDBDataset", "SqlDataset", "ExperimentalSqlDataset",
    "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset", "MatchingFilesDataset", "ExperimentalMatchingFilesDataset",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2", "LoadDataset",
    "SnapshotDataset", "SnapshotDatasetV2", "SnapshotDatasetReader", "SnapshotNestedDatasetReader",
    "DistributedSave", "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount", "DebugNumericSummary",
    "DebugNumericSummaryV2",
}
_PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
_NETWORK_OPS = {"DataServiceDataset", "DataServiceDatasetV2", "DataServiceDatasetV3", "DataServiceDatasetV4",
                "RegisterDataset", "RegisterDatasetV2", "Rpc", "TryRpc", "RpcCall", "RpcClient", "RpcServer",
                "RpcServerStart", "RpcServerRegister", "RpcCheckStatus", "RpcGetValue"}
_CHECKPOINT_OPS = {"Save", "SaveV2", "SaveSlices", "Restore", "RestoreV2", "RestoreSlice", "MergeV2Checkpoints"}


@dataclass(frozen=True)
class UnsafeOp:
    """One op that does more than compute, and where it is."""

    op: str
    node: str
    function: str
    what: str

    def describe(self) -> str:
        where = f"in function '{self.function}'" if self.function else "in the graph"
        return f"{self.op} (node '{self.node}' {where}: {self.what})"


def _what(node: Any) -> str | None:
    """Why ``node`` is unsafe, or None when it only computes."""
    op = node.op
    if op in _PYTHON_OPS:
        return "runs Python code"
    if op in _NETWORK_OPS:
        return "reaches the network"
    if op in _FILE_OPS:
        return "reads or writes files"
    if op == "PrintV2":
        stream = node.attr["output_stream"].s.decode(errors="replace") if "output_stream" in node.attr else ""
        return f"prints to {stream}" if stream.startswith("file://") else None
    if op in ("DecodeProtoV2", "EncodeProto") and "descriptor_source" in node.attr:
        source = node.attr["descriptor_source"].s.decode(errors="replace")
        return None if source in ("", "local://", "global://") else f"reads the file {source}"
    return None


def _called(node: Any, library: set[str]) -> Iterator[str]:
    """Functions a node calls: by op name, or through function-valued attributes (If, While, map, ...)."""
    if node.op in library:
        yield node.op
    for value in node.attr.values():
        if value.HasField("func"):
            yield value.func.name
        if value.HasField("list"):
            yield from (f.name for f in value.list.func)


def _reachable(roots: Iterable[str], functions: dict[str, Any]) -> list[str]:
    seen, stack = set(), [r for r in roots if r in functions]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(c for n in functions[name].node_def for c in _called(n, set(functions)) if c in functions)
    return sorted(seen)


def _object_graph_functions(object_graph: Any) -> set[str]:
    """Every function the TF2 loader restores (and may run: resources' initializers, saveables' restores)."""
    names = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
    return names


def unsafe_ops(path: Path) -> list[UnsafeOp]:
    """The unsafe ops that loading or calling the SavedModel at ``path`` can run (empty: it only computes).

    TF2 SavedModels (with an object graph): the functions the loader restores, and what they call; the graph's
    own nodes (the TF1 saver, which TF2's loader never runs) are not. TF1 SavedModels: every graph node and
    what it calls, checkpoint ops allowed only inside the saver's own scope (the loader restores variables
    with them).
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    found: list[UnsafeOp] = []
    for meta in saved.meta_graphs:
        functions = {f.signature.name: f for f in meta.graph_def.library.function}
        roots: set[str] = set()
        if meta.HasField("object_graph_def") and meta.object_graph_def.nodes:
            roots = _object_graph_functions(meta.object_graph_def)
        else:
            saver_scope = meta.saver_def.restore_op_name.split("/")[0] + "/" if meta.saver_def.restore_op_name else None
            for node in meta.graph_def.node:
                roots.update(_called(node, set(functions)))
                what = _what(node)
                if what and not (node.op in _CHECKPOINT_OPS and saver_scope and node.name.startswith(saver_scope)):
                    found.append(UnsafeOp(node.op, node.name, "", what))
        for name in _reachable(roots, functions):
            found.extend(UnsafeOp(n.op, n.name, name, what) for n in functions[name].node_def if (what := _what(n)))
    return found
