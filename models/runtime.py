"""Run a detector file (ONNX through onnxruntime, TFLite through ai-edge-litert) on z-vectors.

For training-side checks (evaluation, parity, benchmarks). The device loads bundles through
``agent.inference``; ``models`` may not import it, so this is the small offline twin, kept to
the same contract: input ``z`` float32[N, k] -> (anomaly_score[N], fault_probabilities[N, C]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from foreshock.errors import BundleError

F32 = npt.NDArray[np.float32]


class OnnxRunner:
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise BundleError(f"{path}: onnxruntime cannot load it: {exc}") from None
        self.input = self.session.get_inputs()[0].name

    def __call__(self, z: npt.ArrayLike) -> tuple[F32, F32]:
        a, p = self.session.run(["anomaly_score", "fault_probabilities"],
                                {self.input: np.asarray(z, np.float32)})
        return np.asarray(a, np.float32), np.asarray(p, np.float32)


class TfliteRunner:
    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the legacy runtime, same API
            from tflite_runtime.interpreter import Interpreter
        try:
            self.interp: Any = Interpreter(model_path=str(path), num_threads=1)
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{path}: TFLite cannot load it: {exc}") from None
        self.input = self.interp.get_input_details()[0]["index"]
        self.outputs = {d["name"]: d["index"] for d in self.interp.get_output_details()}
        self.batch = -1

    def __call__(self, z: npt.ArrayLike) -> tuple[F32, F32]:
        x = np.ascontiguousarray(z, np.float32)
        if x.shape[0] != self.batch:
            self.interp.resize_tensor_input(self.input, list(x.shape))
            self.interp.allocate_tensors()
            self.batch = x.shape[0]
        self.interp.set_tensor(self.input, x)
        self.interp.invoke()
        return (np.array(self.interp.get_tensor(self.outputs["anomaly_score"])),
                np.array(self.interp.get_tensor(self.outputs["fault_probabilities"])))


def runner(path: Path) -> OnnxRunner | TfliteRunner:
    return TfliteRunner(path) if Path(path).suffix == ".tflite" else OnnxRunner(path)
