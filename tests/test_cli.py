import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def worldpm(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worldpm", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_every_verb():
    from worldpm.cli import VERBS

    out = worldpm("--help")
    assert out.returncode == 0
    for verb in ("collect", "train", "eval", "scaling", "compare", "score", "serve"):
        assert verb in VERBS and f"  {verb}" in out.stdout


def test_unknown_verb_is_one_line(capsys):
    from worldpm import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["frobnicate"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "frobnicate" in err


def test_verb_not_built_yet_is_one_line(monkeypatch, capsys):
    from worldpm import cli

    monkeypatch.setitem(cli.VERBS, "teleport", ("teleport", "worldpm.teleport_not_built:run", "not yet"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["teleport", "x=1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip() == "worldpm: error: verb 'teleport' is not built yet (no module worldpm.teleport_not_built)"


def test_main_job_scores_the_worldpm_readme_examples():
    import json

    from tests.conftest import tiny_arch
    from worldpm.model.reward_model import RewardModel
    from worldpm.model.tokenizer import load_tokenizer

    examples = ROOT / "worldpm" / "assets" / "examples" / "worldpm_readme.jsonl"
    out = worldpm("score", "model=tiny", f"input={examples}")
    assert out.returncode == 0, out.stderr
    rows = [line.split("\t") for line in out.stdout.strip().splitlines()]
    assert [r[0] for r in rows] == ["0", "1"]
    # the verb's rewards (printed to 6 decimals) are the Python API's on the same model=tiny (random init, model.seed 0)
    rm = RewardModel.from_config(tiny_arch(), load_tokenizer("tiny"), head="mlp", seed=0).eval()
    expected = rm.score([json.loads(line)["conversation"] for line in examples.read_text().splitlines()])
    assert [float(r[1]) for r in rows] == pytest.approx(expected, abs=2e-6)
    assert abs(expected[0] - expected[1]) > 1e-4  # the two answers get different rewards, so the comparison can fail


@pytest.mark.parametrize("args,needle", [
    (["model=nonexistent-model", "input=x"], "nonexistent-model"),
    (["input=does/not/exist.jsonl"], "does/not/exist.jsonl"),
    (["model_path=/no/such/ckpt", "input=worldpm/assets/examples/worldpm_readme.jsonl"], "/no/such/ckpt"),
    (["input=worldpm/assets/examples/worldpm_readme.jsonl", "dtype=float8"], "float8"),
])
def test_bad_input_is_a_one_line_error_naming_it(args, needle):
    out = worldpm("score", *args)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and needle in lines[0], out.stderr
