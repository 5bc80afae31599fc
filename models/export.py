"""One detector graph, written as ONNX and as a TFLite flatbuffer from the same weights.

The graph (``z`` float32[N, k] are baseline robust z-scores)::

    zc   = clip(z, z_low, z_clip)                 z_low = -z_clip unless z_floor is set
    h    = relu(zc @ w1 + b1)                      fault classifier hidden layer
    p    = softmax(h @ w2 + b2)                    -> fault_probabilities float32[N, 6]
    a    = sqrt(relu(zc)^2 @ w_anomaly + b_anomaly) -> anomaly_score float32[N]

``anomaly_score`` is a weighted quadratic mean of the positive (worse-than-baseline)
deviations in robust-sd units, higher = more anomalous; the weights are non-negative and
sum to 1, so one feature far out counts more than many slightly out. Both files are
built from :class:`DetectorWeights` by hand (onnx.helper, and the TFLite schema's object
API that ``ai_edge_litert`` ships), so the two formats compute the same function and
:func:`reference_forward` (numpy) is the oracle for tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import ConfigError

LABELS = ("normal", "inner_race", "outer_race", "ball", "imbalance", "misalignment")
INPUT = "z"
OUTPUTS = ("anomaly_score", "fault_probabilities")
OPSET = 17
#: Kept in float by the int8 quantizer: the output stages, where int8 steps would move
#: decisions near the threshold (the matrix products stay int8).
FLOAT_NODES = ("fc2_matmul", "fc2_add", "softmax", "anomaly_square", "anomaly_matmul",
               "anomaly_add", "anomaly_sqrt", "anomaly_reshape")

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class DetectorWeights:
    z_clip: float
    w1: F32  # [k, hidden]
    b1: F32  # [hidden]
    w2: F32  # [hidden, classes]
    b2: F32  # [classes]
    w_anomaly: F32  # [k] non-negative
    b_anomaly: float
    #: Lower clip of z; None = -z_clip. A graph that reads only relu(z) (the evidence
    #: classifier and the anomaly head) computes the same function with 0 here, and int8
    #: then spends its 256 steps on [0, z_clip] instead of [-z_clip, z_clip].
    z_floor: float | None = None

    @property
    def z_low(self) -> float:
        return -self.z_clip if self.z_floor is None else float(self.z_floor)

    @property
    def n_inputs(self) -> int:
        return int(self.w1.shape[0])

    def __post_init__(self) -> None:
        k, h = self.w1.shape
        if self.b1.shape != (h,) or self.w2.shape[0] != h or self.b2.shape != self.w2.shape[1:]:
            raise ConfigError(f"detector weight shapes disagree: w1 {self.w1.shape}, "
                              f"b1 {self.b1.shape}, w2 {self.w2.shape}, b2 {self.b2.shape}")
        if self.w_anomaly.shape != (k,) or (self.w_anomaly < 0).any() or self.b_anomaly < 0:
            raise ConfigError("w_anomaly must be k non-negative weights, b_anomaly >= 0")
        if not -self.z_clip <= self.z_low < self.z_clip:
            raise ConfigError(f"z_floor {self.z_floor} must lie in [-z_clip, z_clip)")


def reference_forward(w: DetectorWeights, z: npt.ArrayLike) -> tuple[F32, F32]:
    """numpy implementation of the graph: (anomaly_score[N], fault_probabilities[N, C])."""
    zc = np.clip(np.asarray(z, np.float32), w.z_low, w.z_clip)
    h = np.maximum(zc @ w.w1 + w.b1, 0)
    logits = h @ w.w2 + w.b2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    pos = np.maximum(zc, 0)
    a = np.sqrt(np.maximum((pos * pos) @ w.w_anomaly + np.float32(w.b_anomaly), 0))
    return a.astype(np.float32), p.astype(np.float32)


def to_onnx(w: DetectorWeights, input_features: list[str] | None = None) -> Any:
    """The detector as an onnx.ModelProto (opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k, c = w.n_inputs, w.w2.shape[1]
    inits = [
        numpy_helper.from_array(np.array(w.z_low, np.float32), "z_min"),
        numpy_helper.from_array(np.array(w.z_clip, np.float32), "z_max"),
        numpy_helper.from_array(w.w1.astype(np.float32), "w1"),
        numpy_helper.from_array(w.b1.astype(np.float32), "b1"),
        numpy_helper.from_array(w.w2.astype(np.float32), "w2"),
        numpy_helper.from_array(w.b2.astype(np.float32), "b2"),
        numpy_helper.from_array(w.w_anomaly.astype(np.float32).reshape(k, 1), "w_anomaly"),
        numpy_helper.from_array(np.array([w.b_anomaly], np.float32), "b_anomaly"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Clip", [INPUT, "z_min", "z_max"], ["zc"], name="clip"),
        helper.make_node("MatMul", ["zc", "w1"], ["h_mm"], name="fc1_matmul"),
        helper.make_node("Add", ["h_mm", "b1"], ["h_pre"], name="fc1_add"),
        helper.make_node("Relu", ["h_pre"], ["h"], name="fc1_relu"),
        helper.make_node("MatMul", ["h", "w2"], ["l_mm"], name="fc2_matmul"),
        helper.make_node("Add", ["l_mm", "b2"], ["logits"], name="fc2_add"),
        helper.make_node("Softmax", ["logits"], [OUTPUTS[1]], axis=1, name="softmax"),
        helper.make_node("Relu", ["zc"], ["zpos"], name="anomaly_relu"),
        helper.make_node("Mul", ["zpos", "zpos"], ["zsq"], name="anomaly_square"),
        helper.make_node("MatMul", ["zsq", "w_anomaly"], ["a_mm"], name="anomaly_matmul"),
        helper.make_node("Add", ["a_mm", "b_anomaly"], ["a_sq"], name="anomaly_add"),
        helper.make_node("Sqrt", ["a_sq"], ["a2"], name="anomaly_sqrt"),
        helper.make_node("Reshape", ["a2", "flat"], [OUTPUTS[0]], name="anomaly_reshape"),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info(OUTPUTS[0], TensorProto.FLOAT, ["N"]),
         helper.make_tensor_value_info(OUTPUTS[1], TensorProto.FLOAT, ["N", c])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="foreshock.models")
    model.ir_version = 8
    if input_features:
        helper.set_model_props(model, {"input_features": ",".join(input_features),
                                       "labels": ",".join(LABELS)})
    onnx.checker.check_model(model)
    return model


def save_onnx(w: DetectorWeights, path: Path, input_features: list[str] | None = None) -> None:
    import onnx

    onnx.save(to_onnx(w, input_features), str(path))


def to_tflite(w: DetectorWeights) -> bytes:
    """The same graph as a TFLite flatbuffer (float32, dynamic batch)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    b = _TfliteBuilder(fb)
    k, hidden, c = w.n_inputs, w.w1.shape[1], w.w2.shape[1]
    z = b.tensor(INPUT, [1, k], dynamic=True)
    zc = b.tensor("zc", [1, k], dynamic=True)
    zmin = b.tensor("zmin", [1], np.array([w.z_low], np.float32))
    zmax = b.tensor("zmax", [1], np.array([w.z_clip], np.float32))
    zt = b.tensor("zt", [1, k], dynamic=True)
    b.op(fb.BuiltinOperator.MINIMUM, [z, zmax], [zt])
    b.op(fb.BuiltinOperator.MAXIMUM, [zt, zmin], [zc])
    h = b.tensor("h", [1, hidden], dynamic=True)
    b.fully_connected(zc, w.w1, w.b1, h, relu=True, name="fc1")
    logits = b.tensor("logits", [1, c], dynamic=True)
    b.fully_connected(h, w.w2, w.b2, logits, relu=False, name="fc2")
    probs = b.tensor(OUTPUTS[1], [1, c], dynamic=True)
    softmax = fb.SoftmaxOptionsT()
    softmax.beta = 1.0  # the object API defaults beta to 0, a uniform softmax
    b.op(fb.BuiltinOperator.SOFTMAX, [logits], [probs], fb.BuiltinOptions.SoftmaxOptions, softmax)
    zpos = b.tensor("zpos", [1, k], dynamic=True)
    b.op(fb.BuiltinOperator.RELU, [zc], [zpos])
    zsq = b.tensor("zsq", [1, k], dynamic=True)
    b.op(fb.BuiltinOperator.MUL, [zpos, zpos], [zsq], fb.BuiltinOptions.MulOptions,
         fb.MulOptionsT())
    a_sq = b.tensor("a_sq", [1, 1], dynamic=True)
    b.fully_connected(zsq, w.w_anomaly.reshape(k, 1), np.array([w.b_anomaly], np.float32),
                      a_sq, relu=True, name="fca")
    a2 = b.tensor("a2", [1, 1], dynamic=True)
    b.op(fb.BuiltinOperator.SQRT, [a_sq], [a2])
    score = b.tensor(OUTPUTS[0], [1], dynamic=True)
    shape = b.tensor("flat", [1], np.array([-1], np.int32), dtype=fb.TensorType.INT32)
    opts = fb.ReshapeOptionsT()
    opts.newShape = [-1]
    b.op(fb.BuiltinOperator.RESHAPE, [a2, shape], [score], fb.BuiltinOptions.ReshapeOptions, opts)
    model = b.model([z], [score, probs])
    builder = flatbuffers.Builder(4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _TfliteBuilder:
    """Accumulates tensors, buffers and operators for a one-subgraph TFLite model."""

    def __init__(self, fb: Any) -> None:
        self.fb = fb
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [fb.BufferT()]  # buffer 0 is the empty sentinel
        self.ops: list[Any] = []
        self.codes: list[int] = []

    def tensor(self, name: str, shape: list[int], data: np.ndarray | None = None, *,
               dynamic: bool = False, dtype: int | None = None) -> int:
        t = self.fb.TensorT()
        t.name = name
        t.shape = list(shape)
        if dynamic:
            t.shapeSignature = [-1, *shape[1:]]
        t.type = self.fb.TensorType.FLOAT32 if dtype is None else dtype
        t.buffer = 0
        if data is not None:
            buf = self.fb.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0,
           options: Any = None) -> None:
        if code not in self.codes:
            self.codes.append(code)
        o = self.fb.OperatorT()
        o.opcodeIndex = self.codes.index(code)
        o.inputs, o.outputs = inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.ops.append(o)

    def fully_connected(self, x: int, weight: F32, bias: F32, out: int, *, relu: bool,
                        name: str) -> None:
        fb = self.fb
        wt = np.ascontiguousarray(weight.T.astype(np.float32))  # TFLite wants [units, in]
        wi = self.tensor(f"{name}_w", list(wt.shape), wt)
        bi = self.tensor(f"{name}_b", [wt.shape[0]], bias.astype(np.float32))
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (fb.ActivationFunctionType.RELU if relu
                                        else fb.ActivationFunctionType.NONE)
        self.op(fb.BuiltinOperator.FULLY_CONNECTED, [x, wi, bi], [out],
                fb.BuiltinOptions.FullyConnectedOptions, opts)

    def model(self, inputs: list[int], outputs: list[int]) -> Any:
        fb = self.fb
        sub = fb.SubGraphT()
        sub.tensors, sub.operators = self.tensors, self.ops
        sub.inputs, sub.outputs, sub.name = inputs, outputs, "detector"
        codes = []
        for code in self.codes:
            oc = fb.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = 1
            codes.append(oc)
        m = fb.ModelT()
        m.version = 3
        m.operatorCodes, m.subgraphs, m.buffers = codes, [sub], self.buffers
        m.description = "foreshock detector"
        return m


def save_tflite(w: DetectorWeights, path: Path) -> None:
    Path(path).write_bytes(to_tflite(w))
