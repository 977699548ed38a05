"""scripts/gpu_check.sh, the one-GPU speed check, in its CPU dry-run mode (tiny shapes, seconds): every row is measured or
skipped with its reason, the figures hang together, and the JSON and the summary table are written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import gpu_check  # noqa: E402


def test_dry_run_measures_training_three_ways_and_serving_both_ways(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--peak-tflops", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    flash, sdpa, padded = (next(r for r in result["train"] if r["name"] == row[0]) for row in gpu_check.TRAIN_ROWS)
    assert flash["skipped"] == "dry run on the CPU"  # never silently missing: the reason is in the row
    assert sdpa["attention_used"] == "worldpm_varlen" and padded["attention_used"] == "sdpa"
    assert sdpa["real_tokens"] == padded["real_tokens"] > 0  # the same pairs in the same steps
    assert sdpa["padding_share"] == 0 and sdpa["computed_tokens"] == sdpa["real_tokens"]
    assert padded["padding_share"] == pytest.approx(1 - padded["real_tokens"] / padded["computed_tokens"], abs=1e-4)
    assert padded["padding_share"] > 0.05  # long-tailed lengths: padded rows waste compute
    for r in (sdpa, padded):
        assert r["real_tokens_per_s"] == pytest.approx(r["real_tokens"] / r["seconds"], rel=1e-3)
        assert r["mfu"] == pytest.approx(6 * r["n_params_non_embedding"] * r["real_tokens_per_s"] / 1e12, abs=1e-4)
        assert r["steps_timed"] == 2 and r["loss_last"] > 0
    assert result["model"] == {"name": "tiny", "n_params_non_embedding": sdpa["n_params_non_embedding"]}
    on, off = result["serve"]
    assert (on["batching"], off["batching"]) == (True, False) and on["requests"] == off["requests"] == 4 * 2
    assert off["requests_per_batch"] == 1.0 and on["requests_per_batch"] >= 1.0 and on["requests_per_s"] > 0
    assert result["serve_speedup"] == pytest.approx(on["requests_per_s"] / off["requests_per_s"], abs=0.01)
    assert "| packed, SDPA per segment (worldpm_varlen) |" in proc.stdout and "| dynamic batching off |" in proc.stdout
    assert "skipped: dry run on the CPU" in proc.stdout
    assert not (out / "work").exists()  # its scratch (data, runs, the served model) is removed


def test_missing_lists_absent_and_out_of_range_packages(monkeypatch):
    monkeypatch.setattr(gpu_check, "REQUIREMENTS", [
        ("json", "no-such-dist-for-json", ">=1", "1.0"),           # importable, but no distribution metadata: install it
        ("worldpm_no_such_module", "nothing", ">=1", "2.0"),        # not importable
        ("pytest", "pytest", "<1", "8.0.0"),                        # installed, outside the range
        ("pytest", "pytest", ">=1", "8.0.0"),                       # fine
    ])
    assert gpu_check.missing_requirements() == ["no-such-dist-for-json==1.0", "nothing==2.0", "pytest==8.0.0"]


def test_peak_from_the_device_name_or_the_option():
    assert gpu_check.peak_tflops("NVIDIA H200", None) == 989.4 and gpu_check.peak_tflops("NVIDIA A100-SXM4-80GB", None) == 312.0
    assert gpu_check.peak_tflops("Some GPU", None) is None and gpu_check.peak_tflops("NVIDIA H200", 500) == 500
