"""Convert TF.js *graph* models (``model.json`` + ``*.bin`` weight shards) to ONNX, in pure Python.

A TF.js graph model is a TensorFlow ``GraphDef`` written as JSON (``modelTopology.node``) with its
constants moved into binary shards described by ``weightsManifest``, often quantised
(``quantization: {dtype: uint8|uint16, scale, min}`` or ``{dtype: float16}``). No TensorFlow is
needed to read one: the JSON is the graph, the shards are little-endian arrays.

The conversion keeps TensorFlow's NHWC layout for every tensor, so shape arithmetic and axes mean
what they meant in TensorFlow; the few ops ONNX defines on NCHW (convolutions, pooling, resizes)
are wrapped in a pair of ``Transpose`` nodes, which ONNX Runtime's layout optimiser cancels
between neighbouring ops at load time.

Only the ops the project's models use are supported (``_Converter._HANDLERS``); anything else
raises ``ValueError`` naming the op. ``outputs`` cuts the graph: only what those tensors need is
converted (the detector stops at its heat map and box sizes; decoding is numpy in
``pipelines.detect``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["TfjsModel", "convert_tfjs_to_onnx", "read_weights"]

_TF_DTYPES = {"DT_FLOAT": TensorProto.FLOAT, "DT_INT32": TensorProto.INT32,
              "DT_BOOL": TensorProto.BOOL, "DT_INT64": TensorProto.INT64}
_NP = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_TO_NCHW, _TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)


@dataclass(frozen=True)
class TfjsModel:
    """A parsed TF.js graph model: its nodes by name, weights by name and signature."""

    nodes: dict[str, dict[str, Any]]
    weights: dict[str, np.ndarray]
    signature: dict[str, Any]

    @classmethod
    def parse(cls, model_json: bytes | str, shards: Mapping[str, bytes]) -> TfjsModel:
        """`shards`: each path named in the manifest -> its bytes."""
        try:
            doc = json.loads(model_json)
            topology, manifest = doc["modelTopology"], doc["weightsManifest"]
            nodes = {n["name"]: n for n in topology["node"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a TF.js graph model: {exc}") from exc
        if topology.get("library", {}).get("function"):
            raise ValueError("TF.js graph functions (control-flow v2) are not supported")
        return cls(nodes, read_weights(manifest, shards), doc.get("signature") or {})


def read_weights(manifest: Sequence[Mapping[str, Any]],
                 shards: Mapping[str, bytes]) -> dict[str, np.ndarray]:
    """The manifest's weights, dequantised to their original dtype. Each group's shards are one
    byte stream, cut in manifest order."""
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        try:
            data = b"".join(shards[p] for p in group["paths"])
        except KeyError as exc:
            raise ValueError(f"weight shard {exc} is missing") from None
        pos = 0
        for w in group["weights"]:
            shape = [int(d) for d in w["shape"]]
            count = int(np.prod(shape, dtype=np.int64))
            q = w.get("quantization")
            stored = np.dtype({"uint8": np.uint8, "uint16": np.uint16, "float16": np.float16}[
                q["dtype"]]) if q else np.dtype(_NP[w["dtype"]])
            size = count * stored.itemsize
            if pos + size > len(data):
                raise ValueError(f"weight {w['name']} runs past the end of its shards")
            raw = np.frombuffer(data, stored, count, pos)
            pos += size
            if q and q["dtype"] in ("uint8", "uint16"):
                value = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            else:
                value = raw
            out[w["name"]] = value.astype(_NP[w["dtype"]]).reshape(shape)
        if pos != len(data):
            raise ValueError(f"{len(data) - pos} bytes left over in shards {group['paths']}")
    return out


def convert_tfjs_to_onnx(model: TfjsModel, outputs: Sequence[str],
                         inputs: Mapping[str, Sequence[int | str] | None], *,
                         assume: Mapping[str, bool] | None = None,
                         opset: int = 17) -> onnx.ModelProto:
    """The part of `model` that computes `outputs`, with graph inputs named after the TF
    placeholders and given these shapes (NHWC as in TF; a str is a symbolic dimension; None: any
    rank). An output is a TF tensor name ("node" or "node:1"), or a key of the model's signature
    (RVM's "pha"), which then names the ONNX output.

    `assume` fixes boolean tensors (the predicates of TF1 `Switch`/`Merge` conditionals) to a
    value: only the branch taken is converted, so the ONNX graph has no control flow and is
    valid only where the assumption holds at run time."""
    return _Converter(model, opset, assume or {}).convert(outputs, inputs)


def _s(attr: Mapping[str, Any], key: str, default: str = "") -> str:
    v = attr.get(key, {}).get("s")
    return base64.b64decode(v).decode() if v else default


def _ints(attr: Mapping[str, Any], key: str) -> list[int]:
    return [int(i) for i in attr.get(key, {}).get("list", {}).get("i", [])]


def _strs(attr: Mapping[str, Any], key: str) -> list[str]:
    return [base64.b64decode(s).decode() for s in attr.get(key, {}).get("list", {}).get("s", [])]


def _ref(name: str) -> str:
    """A TF input reference as this converter names the tensor ("x:0" and "x" are the same)."""
    return name[:-2] if name.endswith(":0") else name


_INT_MAX = np.iinfo(np.int64).max
# ops whose later inputs only compute what the conversion replaces (see _op_space_to_batch)
_FIRST_INPUT_ONLY = {"SpaceToBatchND", "BatchToSpaceND"}


class _Converter:
    def __init__(self, model: TfjsModel, opset: int, assume: Mapping[str, bool]) -> None:
        self.model = model
        self.opset = opset
        self.assume = {_ref(k): v for k, v in assume.items()}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.consts: dict[str, np.ndarray] = {}
        self.done: set[str] = set()
        self.dead: set[str] = set()  # tensors of a conditional branch not taken
        self.space_to_batch: dict[str, tuple[str, list[int]]] = {}  # name -> (input, block)
        self.batched: set[str] = set()  # convolutions over a SpaceToBatchND (made dilated)
        self._n = 0

    # ---- plumbing ------------------------------------------------------------------------------
    def convert(self, outputs: Sequence[str],
                inputs: Mapping[str, Sequence[int | str] | None]) -> onnx.ModelProto:
        graph_inputs = []
        order = {name: k for k, name in enumerate(self.model.nodes)}
        # in the graph's own placeholder order: the result never hangs on how a config's
        # mapping was written (a YAML dump sorts keys)
        for name, shape in sorted(inputs.items(), key=lambda item: order.get(item[0], -1)):
            node = self.model.nodes.get(name)
            if node is None or node["op"] != "Placeholder":
                raise ValueError(f"{name!r} is not a placeholder of the graph")
            dtype = _TF_DTYPES[node["attr"]["dtype"]["type"]]
            graph_inputs.append(helper.make_tensor_value_info(
                name, dtype, None if shape is None else list(shape)))
            self.done.add(name)
        signature = self.model.signature.get("outputs", {})
        names = []
        for out in outputs:
            tensor = _ref(signature[out]["name"]) if out in signature else _ref(out)
            self._visit(tensor.split(":")[0])
            if tensor in self.dead:
                raise ValueError(f"output {out!r} is on a branch not taken")
            if out in signature and out != tensor:  # the signature's key names the output
                tensor = self._add("Identity", [tensor], out)
            names.append(tensor)
        if constant := [n for n in names if n in self.consts]:
            raise ValueError(f"outputs {constant} are constants")
        used = {i for n in self.nodes for i in n.input}  # TF weights replaced by ONNX ones drop
        graph = helper.make_graph(self.nodes, "tfjs", graph_inputs, [],
                                  [t for name, t in self.inits.items() if name in used])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="bgremove tfjs_to_onnx")
        model.ir_version = 8
        # the outputs take the types and shapes ONNX's shape inference gives them
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        model.graph.output.extend(
            inferred[n] if n in inferred else helper.make_tensor_value_info(n, TensorProto.FLOAT, [])
            for n in names)
        onnx.checker.check_model(model)
        return model

    def _visit(self, name: str) -> None:
        """Convert `name` after everything it reads (iteratively: graphs are deep)."""
        stack = [(name, False)]
        while stack:
            cur, ready = stack.pop()
            if cur in self.done:
                continue
            node = self.model.nodes.get(cur)
            if node is None:
                raise ValueError(f"node {cur!r} is not in the graph")
            ins = [_ref(i) for i in node.get("input", []) if not i.startswith("^")]
            if node["op"] in _FIRST_INPUT_ONLY:
                ins = ins[:1]
            if not ready:
                stack.append((cur, True))
                if cur not in self.assume:
                    stack.extend((d.split(":")[0], False) for d in ins)
                continue
            self.done.add(cur)
            if cur in self.assume:  # a predicate fixed by the caller
                self.consts[cur] = np.array(self.assume[cur])
                continue
            if node["op"] == "Placeholder":
                raise ValueError(f"placeholder {cur!r} is needed but was given no shape")
            if node["op"] == "Merge":
                self._op_merge(node, ins)
                continue
            if any(i in self.dead for i in ins):  # a branch not taken: nothing to convert
                self.dead.update([cur, *(f"{cur}:{k}" for k in range(1, 8))])
                continue
            handler = self._HANDLERS.get(node["op"])
            if handler is None:
                raise ValueError(f"TF op {node['op']!r} (node {cur!r}) is not supported")
            handler(self, node, ins)

    def _tmp(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__{self._n}"

    def _add(self, op: str, ins: Sequence[str], out: str | None = None, **attrs: Any) -> str:
        out = out or self._tmp(op)
        self.nodes.append(helper.make_node(op, list(ins), [out], **attrs))
        return out

    def _const(self, value: Any, hint: str = "const") -> str:
        name = self._tmp(hint)
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def _value(self, name: str) -> np.ndarray:
        """A constant input's value (axes, sizes, paddings must be constants here)."""
        if name not in self.consts:
            raise ValueError(f"{name!r} must be a constant for this conversion")
        return self.consts[name]

    # ---- ops -----------------------------------------------------------------------------------
    def _op_const(self, node, ins) -> None:
        name = node["name"]
        if name in self.model.weights:
            value = self.model.weights[name]
        else:  # small tensors can be inlined in the topology; empty ones have no data at all
            tensor = node["attr"]["value"]["tensor"]
            shape = [int(d.get("size", 0)) for d in tensor.get("tensorShape", {}).get("dim", [])]
            if int(np.prod(shape)) != 0:
                raise ValueError(f"constant {name!r} has no weights")
            value = np.zeros(shape, {"DT_FLOAT": np.float32, "DT_INT32": np.int32}[
                tensor["dtype"]])
        self.consts[name] = value
        self.inits[name] = numpy_helper.from_array(value, name)

    def _op_relu6(self, node, ins) -> None:
        self._add("Clip", [ins[0], self._const(np.float32(0)), self._const(np.float32(6))],
                  node["name"])

    def _nchw(self, x: str) -> str:
        return self._add("Transpose", [x], perm=list(_TO_NCHW))

    def _nhwc(self, x: str, out: str) -> str:
        return self._add("Transpose", [x], out, perm=list(_TO_NHWC))

    def _conv_pads(self, attr) -> dict[str, Any]:
        padding = _s(attr, "padding")
        if padding == "SAME":
            return {"auto_pad": "SAME_UPPER"}
        if padding == "VALID":
            return {"auto_pad": "VALID"}
        if padding == "EXPLICIT":
            p = _ints(attr, "explicit_paddings")  # NHWC (before, after) pairs
            return {"pads": [p[2], p[4], p[3], p[5]]}
        raise ValueError(f"padding {padding!r} is not supported")

    def _conv(self, node, ins, *, depthwise: bool) -> None:
        attr = node.get("attr", {})
        if _s(attr, "data_format", "NHWC") != "NHWC":
            raise ValueError(f"{node['name']}: only NHWC convolutions are supported")
        w = self._value(ins[1])  # HWIO, or HW C M for depthwise
        kh, kw = w.shape[:2]
        if depthwise:
            c, m = w.shape[2], w.shape[3]
            weight = w.reshape(kh, kw, 1, c * m).transpose(3, 2, 0, 1)
            group = c
        else:
            weight, group = w.transpose(3, 2, 0, 1), 1
        strides, dil = _ints(attr, "strides"), _ints(attr, "dilations") or [1, 1, 1, 1]
        x = ins[0]
        if x in self.space_to_batch:  # TF's dilated convolution: the same on the input, dilated
            if _s(attr, "padding") != "VALID" or strides != [1, 1, 1, 1]:
                raise ValueError(f"{node['name']}: only VALID, unstrided convolutions after "
                                 "SpaceToBatchND are supported")
            x, block = self.space_to_batch[x]
            dil = [1, *block, 1]
            self.batched.add(node["name"])
        conv_in = [self._nchw(x), self._const(np.ascontiguousarray(weight), "w")]
        fused = _strs(attr, "fused_ops")
        if fused[:1] == ["BiasAdd"]:
            conv_in.append(ins[2])
            fused = fused[1:]
        elif fused:
            raise ValueError(f"{node['name']}: fused ops {fused} are not supported")
        y = self._add("Conv", conv_in, kernel_shape=[kh, kw], strides=strides[1:3],
                      dilations=dil[1:3], group=group, **self._conv_pads(attr))
        for act in fused:
            if act == "Relu":
                y = self._add("Relu", [y])
            elif act == "Relu6":
                y = self._add("Clip", [y, self._const(np.float32(0)), self._const(np.float32(6))])
            else:
                raise ValueError(f"{node['name']}: fused activation {act!r} is not supported")
        self._nhwc(y, node["name"])

    def _op_conv2d(self, node, ins) -> None:
        self._conv(node, ins, depthwise=False)

    def _op_depthwise(self, node, ins) -> None:
        self._conv(node, ins, depthwise=True)

    def _pool(self, node, ins, onnx_op: str) -> None:
        attr = node.get("attr", {})
        k, s = _ints(attr, "ksize"), _ints(attr, "strides")
        extra: dict[str, Any] = {"count_include_pad": 0} if onnx_op == "AveragePool" else {}
        y = self._add(onnx_op, [self._nchw(ins[0])], kernel_shape=k[1:3], strides=s[1:3],
                      **self._conv_pads(attr), **extra)
        self._nhwc(y, node["name"])

    def _op_maxpool(self, node, ins) -> None:
        self._pool(node, ins, "MaxPool")

    def _op_avgpool(self, node, ins) -> None:
        self._pool(node, ins, "AveragePool")

    def _op_mean(self, node, ins) -> None:
        axes = [int(a) for a in np.atleast_1d(self._value(ins[1]))]
        keep = int(node.get("attr", {}).get("keep_dims", {}).get("b", False))
        self._add("ReduceMean", [ins[0]], node["name"], axes=axes, keepdims=keep)

    def _op_concat(self, node, ins) -> None:
        axis = int(self._value(ins[-1]))
        self._add("Concat", ins[:-1], node["name"], axis=axis)

    def _op_resize_bilinear(self, node, ins) -> None:
        attr = node.get("attr", {})
        size = (self._const(self._value(ins[1]).astype(np.int64)) if ins[1] in self.consts
                else self._add("Cast", [ins[1]], to=TensorProto.INT64))
        if attr.get("align_corners", {}).get("b"):
            mode = "align_corners"
        elif attr.get("half_pixel_centers", {}).get("b"):
            mode = "half_pixel"
        else:
            mode = "asymmetric"
        x = self._nchw(ins[0])
        nc = self._add("Slice", [self._add("Shape", [x]), self._const(np.array([0], np.int64)),
                                 self._const(np.array([2], np.int64))])
        sizes = self._add("Concat", [nc, size], axis=0)
        y = self._add("Resize", [x, "", "", sizes], mode="linear",
                      coordinate_transformation_mode=mode)
        self._nhwc(y, node["name"])

    # ---- control flow and dilated convolutions ---------------------------------------------
    def _op_switch(self, node, ins) -> None:
        """Switch(data, pred): output 0 is data when pred is false, output 1 when it is true.
        `pred` must be fixed by `assume`; the other output is dead."""
        pred = self.consts.get(ins[1])
        if pred is None or pred.dtype != np.bool_:
            raise ValueError(f"Switch {node['name']!r}: its predicate {ins[1]!r} must be fixed "
                             "with `assume`")
        name = node["name"]
        live, dead = (f"{name}:1", name) if bool(pred) else (name, f"{name}:1")
        self.dead.add(dead)
        if ins[0] in self.consts:
            self.consts[live] = self.consts[ins[0]]
        self._add("Identity", [ins[0]], live)

    def _op_merge(self, node, ins) -> None:
        live = [i for i in ins if i not in self.dead]
        if len(live) != 1:
            raise ValueError(f"Merge {node['name']!r}: {len(live)} live inputs (fix the "
                             "conditional's predicate with `assume`)")
        self._add("Identity", live, node["name"])

    def _op_space_to_batch(self, node, ins) -> None:
        """Only as TF writes a dilated convolution: SpaceToBatchND -> VALID convolution ->
        BatchToSpaceND, which is the dilated convolution of the (already padded) input; the
        paddings and crops TF computes only make the sizes divide by the block."""
        block_name = _ref(node["input"][1])
        if block_name not in self.model.weights:
            raise ValueError(f"{node['name']}: its block shape must be a constant")
        block = [int(b) for b in self.model.weights[block_name]]
        self.space_to_batch[node["name"]] = (ins[0], block)

    def _op_batch_to_space(self, node, ins) -> None:
        if ins[0] not in self.batched:
            raise ValueError(f"BatchToSpaceND {node['name']!r} does not close a dilated "
                             "convolution")
        self._add("Identity", ins[:1], node["name"])

    # ---- shapes and tensors ----------------------------------------------------------------
    def _op_shape(self, node, ins) -> None:
        self._add("Cast", [self._add("Shape", ins[:1])], node["name"], to=TensorProto.INT32)

    def _op_cast(self, node, ins) -> None:
        to = _TF_DTYPES[node["attr"]["DstT"]["type"]]
        self._add("Cast", ins[:1], node["name"], to=to)

    def _op_strided_slice(self, node, ins) -> None:
        attr = node.get("attr", {})
        mask = {k: int(attr.get(k, {}).get("i", 0)) for k in (
            "begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
        if mask["ellipsis_mask"] or mask["new_axis_mask"]:
            raise ValueError(f"{node['name']}: ellipsis and new-axis masks are not supported")
        begin, end, step = (self._value(i).astype(np.int64) for i in ins[1:4])
        rank = len(begin)
        for d in range(rank):
            if mask["begin_mask"] >> d & 1:
                begin[d] = 0 if step[d] > 0 else _INT_MAX
            if mask["end_mask"] >> d & 1:
                end[d] = _INT_MAX if step[d] > 0 else -_INT_MAX
            if mask["shrink_axis_mask"] >> d & 1:
                end[d] = begin[d] + 1 if begin[d] != -1 else _INT_MAX
        y = self._add("Slice", [ins[0], self._const(begin), self._const(end),
                                self._const(np.arange(rank, dtype=np.int64)), self._const(step)])
        shrink = [d for d in range(rank) if mask["shrink_axis_mask"] >> d & 1]
        if shrink:
            y = self._add("Squeeze", [y, self._const(np.array(shrink, np.int64))])
        self._add("Identity", [y], node["name"])

    def _op_slice(self, node, ins) -> None:
        """TF Slice(x, begin, size): size -1 runs to the end."""
        begin = self._add("Cast", [ins[1]], to=TensorProto.INT64)
        size = self._add("Cast", [ins[2]], to=TensorProto.INT64)
        end = self._add("Where", [
            self._add("Equal", [size, self._const(np.array(-1, np.int64))]),
            self._const(np.array(_INT_MAX, np.int64)), self._add("Add", [begin, size])])
        self._add("Slice", [ins[0], begin, end], node["name"])

    def _op_pack(self, node, ins) -> None:
        axis = self._const(np.array([int(node.get("attr", {}).get("axis", {}).get("i", 0))],
                                    np.int64))
        parts = [self._add("Unsqueeze", [i, axis]) for i in ins]
        self._add("Concat", parts, node["name"],
                  axis=int(node.get("attr", {}).get("axis", {}).get("i", 0)))

    def _op_pad(self, node, ins) -> None:
        pads = self._value(ins[1]).astype(np.int64)  # rank x (before, after)
        self._add("Pad", [ins[0], self._const(np.concatenate([pads[:, 0], pads[:, 1]]))],
                  node["name"])

    def _op_broadcast_to(self, node, ins) -> None:
        shape = self._add("Cast", [ins[1]], to=TensorProto.INT64)
        self._add("Expand", [ins[0], shape], node["name"])

    def _split_outputs(self, name: str, count: int) -> list[str]:
        return [name] + [f"{name}:{k}" for k in range(1, count)]

    def _op_split(self, node, ins) -> None:
        axis = int(self._value(ins[0]))
        count = int(node["attr"]["num_split"]["i"])
        self.nodes.append(helper.make_node("Split", [ins[1]],
                                           self._split_outputs(node["name"], count), axis=axis))

    def _op_split_v(self, node, ins) -> None:
        sizes = self._value(ins[1]).astype(np.int64)
        if (sizes < 0).any():
            raise ValueError(f"{node['name']}: SplitV with an inferred size is not supported")
        axis = int(self._value(ins[2]))
        self.nodes.append(helper.make_node("Split", [ins[0], self._const(sizes)],
                                           self._split_outputs(node["name"], len(sizes)),
                                           axis=axis))

    def _op_identity(self, node, ins) -> None:
        if ins[0] in self.consts:  # constants stay known through identities (weights in a branch)
            self.consts[node["name"]] = self.consts[ins[0]]
        self._add("Identity", ins[:1], node["name"])

    def _op_square(self, node, ins) -> None:
        self._add("Mul", [ins[0], ins[0]], node["name"])

    _HANDLERS: ClassVar[dict[str, Callable[[_Converter, dict, list[str]], None]]] = {}


def _same(onnx_op: str) -> Callable[[_Converter, dict, list[str]], None]:
    """A TF op that is one ONNX op with the same inputs."""
    def handle(self: _Converter, node: dict, ins: list[str]) -> None:
        self._add(onnx_op, ins, node["name"])
    return handle


_Converter._HANDLERS.update({
    "Const": _Converter._op_const,
    "Identity": _Converter._op_identity,
    "Add": _same("Add"),
    "AddV2": _same("Add"),
    "Sub": _same("Sub"),
    "Mul": _same("Mul"),
    "RealDiv": _same("Div"),
    "Relu": _same("Relu"),
    "Sigmoid": _same("Sigmoid"),
    "Tanh": _same("Tanh"),
    "Relu6": _Converter._op_relu6,
    "Conv2D": _Converter._op_conv2d,
    "_FusedConv2D": _Converter._op_conv2d,
    "DepthwiseConv2dNative": _Converter._op_depthwise,
    "FusedDepthwiseConv2dNative": _Converter._op_depthwise,
    "MaxPool": _Converter._op_maxpool,
    "AvgPool": _Converter._op_avgpool,
    "Mean": _Converter._op_mean,
    "ConcatV2": _Converter._op_concat,
    "ResizeBilinear": _Converter._op_resize_bilinear,
    "Minimum": _same("Min"),
    "Maximum": _same("Max"),
    "Square": _Converter._op_square,
    "Switch": _Converter._op_switch,
    "SpaceToBatchND": _Converter._op_space_to_batch,
    "BatchToSpaceND": _Converter._op_batch_to_space,
    "Shape": _Converter._op_shape,
    "Cast": _Converter._op_cast,
    "StridedSlice": _Converter._op_strided_slice,
    "Slice": _Converter._op_slice,
    "Pack": _Converter._op_pack,
    "Pad": _Converter._op_pad,
    "BroadcastTo": _Converter._op_broadcast_to,
    "Split": _Converter._op_split,
    "SplitV": _Converter._op_split_v,
})
