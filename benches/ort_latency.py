"""onnxruntime's single-thread latency for one model, the figure our inference target compares with.

Usage: python3 benches/ort_latency.py [MODEL.onnx] [INPUT.bin]
(defaults: the default model and chelsea's reference input in ../shared/models).
Needs `pip install onnxruntime numpy`. Prints median / min / p90 over 500 timed runs after 50
warm-up runs, with intra- and inter-op threads set to 1.
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort

here = os.path.dirname(os.path.abspath(__file__))
models = os.environ.get("MODEL_DIR", os.path.join(here, "..", "..", "shared", "models"))
model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(models, "shufflenet-v2-12-dequant-f32.onnx")
source = sys.argv[2] if len(sys.argv) > 2 else os.path.join(models, "reference", "inputs", "chelsea.input.bin")

options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
x = np.fromfile(source, dtype="<f4").reshape(1, 3, 224, 224)
for _ in range(50):
    session.run(None, {name: x})
times = []
for _ in range(500):
    start = time.perf_counter()
    session.run(None, {name: x})
    times.append((time.perf_counter() - start) * 1000)
times.sort()
print(f"onnxruntime {ort.__version__}, 1 thread, {os.path.basename(model)}: "
      f"median {times[250]:.2f} ms, min {times[0]:.2f} ms, p90 {times[450]:.2f} ms")
