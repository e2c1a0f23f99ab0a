"""The Python API in about 20 lines: open, calibrate, fold, export, generate.

Runs on the embedded default model `llada-chain` in about a minute on 2 CPU cores:

    python examples/python_api.py runs/api
"""

import sys
from pathlib import Path

from faircalib_export.calibrate.config import CalibConfig
from faircalib_export.calibrate.entry import calibrate_checkpoint
from faircalib_export.export.onnx_export import ExportOptions, export_onnx
from faircalib_export.fold.fold import fold_artifact
from faircalib_export.opener import open_model

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/api")
calibrated = calibrate_checkpoint("llada-chain", out / "calibrated", CalibConfig("flatquant"))
deploy = fold_artifact(calibrated, out / "deploy")  # packed int4 weights, float64 fold
exported = export_onnx(deploy, out / "onnx", ExportOptions(variant="w4a4-int"))

prompt = "start 12 then +2 then -1 then +1 then -2"
for model in (open_model("llada-chain"), open_model(exported)):  # FP in torch, W4A4 on ORT
    decoder = model.text_decoder()
    result = model.generate([decoder.encode(prompt)], model.policy())
    print(f"{model.kind:>10}: {decoder.decode(result.generated[0])}")
