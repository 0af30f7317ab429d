"""Convert MediaPipe selfie-segmentation ``.tflite`` flatbuffers to ONNX, in pure Python.

The flatbuffer is read with the ``tflite`` package (schema bindings, no TensorFlow) and rebuilt
with ``onnx.helper``. TFLite is NHWC; here every rank-4 tensor is NCHW: weights are transposed at
conversion time, SAME padding becomes explicit (possibly asymmetric) ``pads``, per-channel
constants become ``[1, C, 1, 1]`` and axes are remapped. Runtime ``Transpose`` nodes appear only
around ``RESHAPE``, whose meaning depends on the memory layout.

Only what the MediaPipe selfie models use is supported (see ``_Converter._HANDLERS``): fp16
``DEQUANTIZE`` of weights (folded into float32 initializers), convolutions, pooling, ``MEAN``,
element-wise ops with fused activations, ``RESIZE_BILINEAR``, ``CONCATENATION``, ``RESHAPE`` and
MediaPipe's custom ``Convolution2DTransposeBias``. Anything else raises ``ValueError``.

Every intermediate tensor is annotated with its expected NCHW shape (``value_info``), so
``onnx.checker.check_model(model, full_check=True)`` cross-checks the conversion with ONNX shape
inference.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import onnx
import tflite
from onnx import helper, numpy_helper

__all__ = ["convert_tflite_to_onnx"]

_MIN_OPSET = 14  # HardSwish
_NHWC_TO_NCHW = (0, 3, 1, 2)
_NCHW_TO_NHWC = (0, 2, 3, 1)
_NHWC_AXIS_TO_NCHW = {0: 0, 1: 2, 2: 3, 3: 1}

_OP_NAMES = {code: name for name, code in vars(tflite.BuiltinOperator).items() if name.isupper()}
_FUSED_NAMES = {code: name for name, code in vars(tflite.ActivationFunctionType).items()
                if name.isupper()}
_TYPES = tflite.TensorType
_DTYPES = {_TYPES.FLOAT32: np.float32, _TYPES.FLOAT16: np.float16,
           _TYPES.INT32: np.int32, _TYPES.INT64: np.int64}
# Activation ops and fused activations share names: TFLite name -> (ONNX op, Clip bounds).
_ACTIVATIONS = {
    "RELU": ("Relu", None),
    "RELU6": ("Clip", (0.0, 6.0)),
    "RELU_N1_TO_1": ("Clip", (-1.0, 1.0)),
    "TANH": ("Tanh", None),
    "LOGISTIC": ("Sigmoid", None),
    "HARD_SWISH": ("HardSwish", None),
}
# Convolution2DTransposeBias keeps a raw C ``TfLiteTransposeConvParams`` in its custom options:
# int32 padding, stride_width, stride_height. Its padding is the C enum ``TfLitePadding``
# (1 = SAME, 2 = VALID), not the flatbuffer ``tflite.Padding`` (SAME = 0, VALID = 1).
_C_PADDING_SAME, _C_PADDING_VALID = 1, 2


def convert_tflite_to_onnx(tflite_bytes: bytes, *, opset: int = 17) -> onnx.ModelProto:
    """Graph input named "input", float32 NCHW [1,3,H,W] RGB in [0,1];
    graph output named "output", float32 NCHW [1,1,H,W] person probability (sigmoid applied)."""
    try:  # a damaged file shows up as these while following offsets and values
        return _Converter(tflite_bytes, opset).convert()
    except (IndexError, TypeError, ZeroDivisionError, struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed TFLite flatbuffer: {exc}") from exc


def _tf_same_pads(in_hw, kernel_hw, strides, dilations) -> list[int]:
    """TensorFlow SAME padding as ONNX pads [top, left, bottom, right]; the odd pixel goes last."""
    begins, ends = [], []
    for size, kernel, stride, dilation in zip(in_hw, kernel_hw, strides, dilations):
        out = -(-size // stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        begins.append(total // 2)
        ends.append(total - total // 2)
    return begins + ends


class _Converter:
    """One conversion: walks the TFLite operators in order and appends ONNX nodes."""

    def __init__(self, data: bytes, opset: int) -> None:
        if not _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version():
            raise ValueError(f"opset {opset} not supported (min {_MIN_OPSET})")
        if not isinstance(data, (bytes, bytearray)) or len(data) < 8 \
                or not tflite.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("not a TFLite flatbuffer (missing 'TFL3' file identifier)")
        self.opset = opset
        self.model = tflite.Model.GetRootAsModel(bytes(data), 0)
        if self.model.SubgraphsLength() != 1:
            raise ValueError(f"expected 1 subgraph, found {self.model.SubgraphsLength()}")
        self.graph = self.model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.value_info: list[onnx.ValueInfoProto] = []
        self.folded: dict[int, np.ndarray] = {}  # constants computed at conversion time (NHWC)
        self.const_names: dict[tuple[int, int], str] = {}
        self.names: dict[int, str] = {}

    # --- tensors -------------------------------------------------------------------------

    def _shape(self, index: int) -> tuple[int, ...]:
        tensor = self.graph.Tensors(index)
        return tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()

    def _name(self, index: int) -> str:
        if index not in self.names:
            name = (self.graph.Tensors(index).Name() or b"").decode() or f"tensor_{index}"
            self.names[index] = name if name not in self.names.values() else f"{name}__{index}"
        return self.names[index]

    def _required_const(self, index: int, name: str) -> np.ndarray:
        """The constant value of an operand that must be constant (axes, sizes)."""
        value = self._const(index)
        if value is None:
            raise ValueError(f"{name}: expected a constant operand")
        return value

    def _const(self, index: int) -> np.ndarray | None:
        """The tensor's constant value in TFLite layout, or None for a runtime tensor."""
        if index in self.folded:
            return self.folded[index]
        tensor = self.graph.Tensors(index)
        buffer = self.model.Buffers(tensor.Buffer())
        if not buffer.DataLength():
            return None
        if tensor.Type() not in _DTYPES:
            raise ValueError(f"constant {self._name(index)!r}: unsupported tensor type "
                             f"{tensor.Type()} (quantized models are not supported)")
        raw = buffer.DataAsNumpy().tobytes()
        return np.frombuffer(raw, dtype=_DTYPES[tensor.Type()]).reshape(self._shape(index))

    def _weight(self, index: int, op_name: str) -> np.ndarray:
        value = self._const(index)
        if value is None or value.dtype != np.float32:
            raise ValueError(f"{op_name}: weights {self._name(index)!r} must be constant float32")
        return value

    def _initializer(self, array: np.ndarray, hint: str) -> str:
        name = f"{hint}__{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def _input(self, index: int, broadcast_rank: int | None = None) -> str:
        """ONNX name of an operand; constants become NCHW initializers, padded to
        ``broadcast_rank`` first so that a per-channel [C] becomes [1, C, 1, 1]."""
        value = self._const(index)
        rank = broadcast_rank or len(self._shape(index))
        if value is None:
            if broadcast_rank == 4 and len(self._shape(index)) not in (0, 4):
                raise ValueError(f"cannot broadcast runtime tensor {self._name(index)!r} "
                                 f"of shape {self._shape(index)} against an NHWC tensor")
            return self._name(index)
        if (index, rank) not in self.const_names:
            value = value.reshape((1,) * (rank - value.ndim) + value.shape)
            value = value.transpose(_NHWC_TO_NCHW) if value.ndim == 4 else value
            self.const_names[index, rank] = self._initializer(value, self._name(index))
        return self.const_names[index, rank]

    # --- node emission -------------------------------------------------------------------

    def _emit(self, op_type: str, inputs: list[str], output: str, **attrs) -> str:
        node_name = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=node_name, **attrs))
        return output

    def _activation(self, kind: str, x: str, output: str) -> None:
        if kind not in _ACTIVATIONS:
            raise ValueError(f"unsupported fused activation {kind!r}")
        op_type, bounds = _ACTIVATIONS[kind]
        bound_names = [self._initializer(np.array(b, np.float32), kind) for b in bounds or ()]
        self._emit(op_type, [x, *bound_names], output)

    def _finish(self, op, options, op_type: str, inputs: list[str], **attrs) -> None:
        """Emit the op's main node, followed by its fused activation if it has one."""
        output = self._name(op.Outputs(0))
        code = options.FusedActivationFunction()
        fused = _FUSED_NAMES.get(code, f"#{code}")
        if fused == "NONE":
            self._emit(op_type, inputs, output, **attrs)
        else:
            self._activation(fused, self._emit(op_type, inputs, f"{output}__pre_act", **attrs),
                             output)

    @staticmethod
    def _options(op, options_class, op_name: str):
        table = op.BuiltinOptions()
        if table is None:
            raise ValueError(f"{op_name}: missing builtin options")
        options = options_class()
        options.Init(table.Bytes, table.Pos)
        return options

    # --- op handlers (TFLite op -> ONNX nodes) ---------------------------------------------

    def _dequantize(self, op, name: str) -> None:
        value = self._const(op.Inputs(0))
        if value is None or value.dtype != np.float16:
            raise ValueError("DEQUANTIZE: only constant float16 weights are supported")
        self.folded[op.Outputs(0)] = value.astype(np.float32)

    def _conv(self, op, name: str) -> None:
        depthwise = name == "DEPTHWISE_CONV_2D"
        opts = self._options(op, tflite.DepthwiseConv2DOptions if depthwise
                             else tflite.Conv2DOptions, name)
        in_shape = self._shape(op.Inputs(0))
        weights = self._weight(op.Inputs(1), name)  # OHWI; depthwise: 1HW(C*multiplier)
        kernel = weights.transpose(3, 0, 1, 2) if depthwise else weights.transpose(0, 3, 1, 2)
        strides = [opts.StrideH(), opts.StrideW()]
        dilations = [opts.DilationHFactor(), opts.DilationWFactor()]
        pads = (_tf_same_pads(in_shape[1:3], kernel.shape[2:], strides, dilations)
                if opts.Padding() == tflite.Padding.SAME else [0, 0, 0, 0])
        inputs = [self._input(op.Inputs(0)), self._initializer(kernel, self._name(op.Inputs(1)))]
        if op.InputsLength() > 2 and op.Inputs(2) >= 0:
            inputs.append(self._input(op.Inputs(2)))
        self._finish(op, opts, "Conv", inputs, kernel_shape=list(kernel.shape[2:]),
                     strides=strides, dilations=dilations, pads=pads,
                     group=in_shape[3] if depthwise else 1)

    def _transpose_conv_bias(self, op, name: str) -> None:
        if op.CustomOptionsLength() < 12:
            raise ValueError(f"{name}: custom options shorter than 3 int32 (padding, strides)")
        padding, stride_w, stride_h = struct.unpack_from("<3i", op.CustomOptionsAsNumpy().tobytes())
        if padding not in (_C_PADDING_SAME, _C_PADDING_VALID):
            raise ValueError(f"{name}: unknown padding value {padding}")
        weights = self._weight(op.Inputs(1), name)  # OHWI -> ONNX ConvTranspose IOHW
        in_hw, out_hw = self._shape(op.Inputs(0))[1:3], self._shape(op.Outputs(0))[1:3]
        strides, begins, ends = [stride_h, stride_w], [], []
        for size, k, s, expected in zip(in_hw, weights.shape[1:3], strides, out_hw):
            # MediaPipe's kernel: crop total // 2 at the start, the rest at the end.
            total = max(0, k - (size - 1) % s - 1) if padding == _C_PADDING_SAME else 0
            if s * (size - 1) + k - total != expected:
                raise ValueError(f"{name}: options {padding, stride_w, stride_h} do not give "
                                 f"the model's output size {tuple(out_hw)}")
            begins.append(total // 2)
            ends.append(total - total // 2)
        kernel = self._initializer(weights.transpose(3, 0, 1, 2), self._name(op.Inputs(1)))
        self._emit("ConvTranspose", [self._input(op.Inputs(0)), kernel, self._input(op.Inputs(2))],
                   self._name(op.Outputs(0)), kernel_shape=list(weights.shape[1:3]),
                   strides=strides, pads=begins + ends)

    def _binary(self, op, name: str) -> None:
        opts = self._options(op, tflite.AddOptions if name == "ADD" else tflite.MulOptions, name)
        rank = len(self._shape(op.Outputs(0)))
        inputs = [self._input(op.Inputs(i), broadcast_rank=rank) for i in range(2)]
        self._finish(op, opts, "Add" if name == "ADD" else "Mul", inputs)

    def _unary(self, op, name: str) -> None:
        self._activation(name, self._input(op.Inputs(0)), self._name(op.Outputs(0)))

    def _pool(self, op, name: str) -> None:
        opts = self._options(op, tflite.Pool2DOptions, name)
        in_hw = self._shape(op.Inputs(0))[1:3]
        kernel = [opts.FilterHeight(), opts.FilterWidth()]
        strides = [opts.StrideH(), opts.StrideW()]
        x, average = self._input(op.Inputs(0)), name == "AVERAGE_POOL_2D"
        if average and opts.Padding() == tflite.Padding.VALID and tuple(kernel) == in_hw:
            return self._finish(op, opts, "GlobalAveragePool", [x])
        pads = (_tf_same_pads(in_hw, kernel, strides, [1, 1])
                if opts.Padding() == tflite.Padding.SAME else [0, 0, 0, 0])
        extra = {"count_include_pad": 0} if average else {}  # TFLite ignores padded cells
        self._finish(op, opts, "AveragePool" if average else "MaxPool", [x],
                     kernel_shape=kernel, strides=strides, pads=pads, **extra)

    def _mean(self, op, name: str) -> None:
        opts = self._options(op, tflite.ReducerOptions, name)
        rank, keep = len(self._shape(op.Inputs(0))), bool(opts.KeepDims())
        axes = sorted({int(a) % rank for a in np.ravel(self._required_const(op.Inputs(1), name))})
        if rank == 4:
            kept = [_NHWC_AXIS_TO_NCHW[a] for a in range(rank) if a not in axes]
            if not keep and kept != sorted(kept):
                raise ValueError(f"MEAN over NHWC axes {axes} without keep_dims changes layout")
            axes = sorted(_NHWC_AXIS_TO_NCHW[a] for a in axes)
        x, output = self._input(op.Inputs(0)), self._name(op.Outputs(0))
        if rank == 4 and axes == [2, 3] and keep:
            self._emit("GlobalAveragePool", [x], output)
        elif self.opset >= 18:
            axes_name = self._initializer(np.array(axes, np.int64), "mean_axes")
            self._emit("ReduceMean", [x, axes_name], output, keepdims=int(keep))
        else:
            self._emit("ReduceMean", [x], output, axes=axes, keepdims=int(keep))

    def _resize_bilinear(self, op, name: str) -> None:
        opts = self._options(op, tflite.ResizeBilinearOptions, name)
        if opts.AlignCorners() and opts.HalfPixelCenters():
            raise ValueError(f"{name}: align_corners and half_pixel_centers are exclusive")
        mode = ("align_corners" if opts.AlignCorners()
                else "half_pixel" if opts.HalfPixelCenters() else "asymmetric")
        batch, _, _, channels = self._shape(op.Inputs(0))
        new_h, new_w = (int(v) for v in self._required_const(op.Inputs(1), name))
        sizes = self._initializer(np.array([batch, channels, new_h, new_w], np.int64), "sizes")
        self._emit("Resize", [self._input(op.Inputs(0)), "", "", sizes],
                   self._name(op.Outputs(0)), mode="linear",
                   coordinate_transformation_mode=mode)

    def _concatenation(self, op, name: str) -> None:
        opts = self._options(op, tflite.ConcatenationOptions, name)
        rank = len(self._shape(op.Outputs(0)))
        axis = opts.Axis() % rank
        inputs = [self._input(op.Inputs(i), broadcast_rank=rank) for i in range(op.InputsLength())]
        self._finish(op, opts, "Concat", inputs,
                     axis=_NHWC_AXIS_TO_NCHW[axis] if rank == 4 else axis)

    def _reshape(self, op, name: str) -> None:
        # A reshape is defined on NHWC memory order, so go through NHWC where a side is 4-D.
        x, output = self._input(op.Inputs(0)), self._name(op.Outputs(0))
        out_shape = self._shape(op.Outputs(0))
        if len(self._shape(op.Inputs(0))) == 4:
            x = self._emit("Transpose", [x], f"{output}__in_nhwc", perm=list(_NCHW_TO_NHWC))
        shape = self._initializer(np.array(out_shape, np.int64), "reshape_shape")
        if len(out_shape) == 4:
            nhwc = self._emit("Reshape", [x, shape], f"{output}__out_nhwc")
            self._emit("Transpose", [nhwc], output, perm=list(_NHWC_TO_NCHW))
        else:
            self._emit("Reshape", [x, shape], output)

    _HANDLERS: ClassVar[dict[str, Callable]] = {
        "DEQUANTIZE": _dequantize, "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv,
        "Convolution2DTransposeBias": _transpose_conv_bias, "ADD": _binary, "MUL": _binary,
        "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool, "MEAN": _mean,
        "RESIZE_BILINEAR": _resize_bilinear, "CONCATENATION": _concatenation, "RESHAPE": _reshape,
        **dict.fromkeys(_ACTIVATIONS, _unary),  # RELU, RELU6, HARD_SWISH, LOGISTIC, ...
    }

    # --- driver ----------------------------------------------------------------------------

    def _op_name(self, op) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite.BuiltinOperator.CUSTOM:
            return (code.CustomCode() or b"").decode()
        return _OP_NAMES.get(builtin, f"builtin #{builtin}")

    def convert(self) -> onnx.ModelProto:
        graph = self.graph
        if graph.InputsLength() != 1 or graph.OutputsLength() != 1:
            raise ValueError("expected a model with exactly one input and one output")
        in_index, out_index = graph.Inputs(0), graph.Outputs(0)
        input_type = graph.Tensors(in_index).Type()
        if len(self._shape(in_index)) != 4 or input_type != tflite.TensorType.FLOAT32:
            raise ValueError(f"expected a float32 NHWC image input, got {self._shape(in_index)}")
        self.names.update({in_index: "input", out_index: "output"})
        for position in range(graph.OperatorsLength()):
            op = graph.Operators(position)
            name = self._op_name(op)
            if name not in self._HANDLERS:
                raise ValueError(f"unsupported TFLite op {name!r} (operator #{position}); "
                                 f"supported: {', '.join(sorted(self._HANDLERS))}")
            self._HANDLERS[name](self, op, name)
            for index in (op.Outputs(i) for i in range(op.OutputsLength())):
                if index not in self.folded and index != out_index:
                    self.value_info.append(self._value_info(index, self._name(index)))
        onnx_graph = helper.make_graph(
            self.nodes, (self.model.Description() or b"tflite").decode(errors="replace"),
            [self._value_info(in_index, "input")], [self._value_info(out_index, "output")],
            initializer=self.initializers, value_info=self.value_info)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(onnx_graph, opset_imports=opsets,
                                  producer_name="pipelines.tflite_to_onnx")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    def _value_info(self, index: int, name: str) -> onnx.ValueInfoProto:
        """Type and NCHW shape of a runtime tensor, as TFLite declares them."""
        stored = self._shape(index)
        shape = [stored[a] for a in _NHWC_TO_NCHW] if len(stored) == 4 else list(stored)
        dtype = np.dtype(_DTYPES.get(self.graph.Tensors(index).Type(), np.float32))
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(dtype), shape)
