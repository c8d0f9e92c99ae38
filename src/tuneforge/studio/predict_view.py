"""Label a file with a finished classify run from the studio: `tuneforge predict`'s own code (predict.run_predict),
writing RUNS_DIR/.studio/NAME/predictions-{tuned|base}-STEM.jsonl and returning its first rows and the accuracy
against the file's labels when it has them.

    predict_file(Path("runs/sentiment"), Path("runs/.studio/sentiment"), "reviews.csv", base=False)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.errors import UserError

PREVIEW = 20


def predict_file(run_dir: Path, out_dir: Path, input_path: str, base: bool = False) -> dict[str, Any]:
    from tuneforge.predict import run_predict
    from tuneforge.runs import run_config
    from tuneforge.stage_info import stage_info

    if not input_path:
        raise UserError("give the file to label (CSV or JSONL with the run's text column)")
    if not (run_dir / "metrics.json").is_file():
        raise UserError(f"{run_dir.name}: not finished yet; predict needs the saved model")
    stage = run_config(run_dir).stage
    if stage_info(stage).model_kind != "classifier":
        raise UserError(f"{run_dir.name}: a {stage} run; predict labels files with a classify run")
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"predictions-{'base' if base else 'tuned'}-{Path(input_path).stem}.jsonl"
    summary = run_predict(str(run_dir), input_path, str(output), base)
    preview = [json.loads(x) for x in output.read_text(encoding="utf-8").splitlines()[:PREVIEW]]
    return {"records": summary["rows"], "accuracy": summary.get("accuracy"), "output": str(output),
            "preview": preview}
