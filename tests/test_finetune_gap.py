"""The paper's fine-tuning finding at CI scale, against a known answer (scripts/finetune_gap.py, two synthetic worlds sharing
structure): starting from the preference model beats starting from scratch on a small fine-tuning set, the gap narrows as the
set grows, and no model goes below the finetune world's Bayes loss."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_from_the_preference_model_wins_small_and_the_gap_narrows(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out = tmp_path / "gap"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "finetune_gap.py"), "--out", str(out), "--sizes", "32", "1024",
                           "--forum-pairs", "4096", "--test-pairs", "600", "--bootstrap", "1000"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "gap.json").read_text())
    small, large = result["rows"]
    bayes = result["bayes_bt_loss"]
    assert (small["n"], large["n"]) == (32, 1024)
    assert small["gap_ci"][0] > 0, small                      # from the PM wins clearly on 32 pairs
    assert large["gap"] < small["gap"] / 2, (small, large)    # and by much less on 1,024
    for r in (small, large):                                  # nothing beats the true reward
        assert r["from_scratch"] > bayes and r["from_pm"] > bayes, (r, bayes)
    assert large["from_scratch"] < small["from_scratch"] and large["from_pm"] < small["from_pm"]  # more data helps both
    assert "| 1,024 |" in (out / "gap.md").read_text() and (out / "gap.png").stat().st_size > 0
