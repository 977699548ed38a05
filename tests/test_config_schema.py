"""Typed configuration: a wrong type, an unknown key, an out-of-range value or an unusable path fails when the config is
composed — one line naming the key and the value, exit status 2, before torch is imported and before any output exists."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_prep.schema import yaml_comments
from worldpm.config import check, compose
from worldpm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data_prep" / "sample" / "synthetic.stackexchange.com.7z"
EXAMPLES = ROOT / "worldpm" / "assets" / "examples" / "worldpm_readme.jsonl"


@pytest.fixture(scope="module")
def no_torch(tmp_path_factory) -> Path:
    """A directory whose `torch` package refuses to be imported: put first on PYTHONPATH, it proves a command never got that far."""
    root = tmp_path_factory.mktemp("no_torch")
    (root / "torch").mkdir()
    (root / "torch" / "__init__.py").write_text("raise ImportError('torch was imported before the config was checked')\n")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from tests.synthetic_pairs import write_dataset

    out = tmp_path_factory.mktemp("data") / "pairs"
    write_dataset(out, 20, 5, seed=0)
    return out


def worldpm(no_torch: Path, verb: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{no_torch}{os.pathsep}{ROOT}"}
    return subprocess.run([sys.executable, "-m", "worldpm", verb, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def one_line(result: subprocess.CompletedProcess, verb: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"worldpm {verb}: error: "), result.stderr
    assert "Traceback" not in result.stderr and "torch was imported" not in result.stderr
    return lines[0]


CASES = [
    ("train", ["trainer.save_every=abc"], "trainer.save_every='abc': expected an integer"),
    ("train", ["trainer.lr=abc"], "trainer.lr='abc': expected a number"),
    ("train", ["trainer.lr=-1"], "trainer.lr=-1.0 must be > 0"),
    ("train", ["data.packing=zip"], "data.packing='zip' is not one of"),
    ("train", ["model.max_length=abc"], "model.max_length='abc': expected an integer"),
    ("train", ["trainer.sav_every=1"], "trainer.sav_every=1: no such setting (did you mean trainer.save_every?)"),
    ("train", ["+trainer.typo=1"], "trainer.typo: no such setting"),
    ("train", ["wandb.mode=loud"], "wandb.mode='loud' is not one of ['online', 'offline', 'disabled']"),
    ("train", ["data.max_tokens_per_micro_batch=100"], "data.max_tokens_per_micro_batch=100 cannot hold one pair"),
    ("train", ["trainer.betas=[0.9]"], "trainer.betas=[0.9] must be two numbers"),
    ("score", [f"input={EXAMPLES}", "max_length=abc"], "max_length='abc': expected an integer"),
    ("score", [f"input={EXAMPLES}", "output=rewards.csv"], "output=rewards.csv: use a .jsonl or .parquet file name"),
    ("score", [f"input={EXAMPLES}", "max_padding=2"], "max_padding=2 must be auto, null or a fraction in [0, 1)"),
    ("eval", ["output_dir=OUT", "bootstrap.confidence=1.5"], "bootstrap.confidence=1.5 must be < 1"),
    ("eval", ["output_dir=OUT", "benchmark=[rewardbench]", "benchmark.rewardbench.max_items=abc"],
     "benchmark.rewardbench.max_items='abc': expected an integer"),
    ("eval", ["output_dir=OUT", "checkpoints=all"], "checkpoints=... needs run_dir"),
    ("serve", ["port=abc"], "port='abc': expected an integer"),
    ("serve", ["batching.window_ms=-1"], "batching.window_ms=-1.0 must be >= 0"),
    ("scaling", ["runs=[.]", "output_dir=OUT", "x=epochs"], "x='epochs' is not one of"),
    ("collect", [f"source.path={SAMPLE}", "output_dir=OUT", "pairs.min_reply_chars=abc"], "pairs.min_reply_chars='abc': expected an integer"),
    ("collect", [f"source.path={SAMPLE}", "output_dir=OUT", "dedup.near.threshold=abc"], "dedup.near.threshold='abc': expected a number"),
    ("collect", [f"source.path={SAMPLE}", "output_dir=OUT", "dedup.near.threshold=2"], "dedup.near.threshold=2.0 must be <= 1"),
    ("collect", [f"source.path={SAMPLE}", "output_dir=OUT", "source.converter=pandoc"], "source.converter='pandoc' is not one of"),
    ("collect", ["source=reddit", "source.path=OUT/missing", "output_dir=OUT"], "source.path=OUT/missing does not exist"),
    ("collect", [f"source.path={SAMPLE}", "output_dir=OUT", "workers=0"], "workers=0 must be >= 1"),
]


@pytest.mark.parametrize("verb,args,needle", CASES, ids=[f"{v}-{a[-1]}" for v, a, _ in CASES])
def test_a_bad_value_is_one_line_before_torch_and_before_any_output(no_torch, dataset, tmp_path, verb, args, needle):
    out = tmp_path / "out"
    args = [a.replace("OUT", str(out)) for a in args]
    if verb == "train":
        args = [f"data.path={dataset}", f"output_dir={out}", *args]
    line = one_line(worldpm(no_torch, verb, *args, cwd=tmp_path), verb)
    assert needle.replace("OUT", str(out)) in line, line
    assert not out.exists()  # nothing was created: not the output directory, not a scratch directory
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_refused_for_every_verb_that_writes(no_torch, dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "out"
    for verb, args in (("train", [f"data.path={dataset}", f"output_dir={target}"]),
                       ("collect", [f"source.path={SAMPLE}", f"output_dir={target}"]),
                       ("eval", [f"output_dir={target}"]),
                       ("scaling", [f"runs=[{tmp_path}]", f"output_dir={target}"]),
                       ("score", [f"input={EXAMPLES}", f"output={target}/rewards.jsonl"])):
        line = one_line(worldpm(no_torch, verb, *args), verb)
        assert f"cannot be created: {blocker} is a file" in line, line


def test_the_checked_config_is_typed_and_the_python_entry_checks_too(dataset, tmp_path):
    cfg = check("train", compose("train", [f"data.path={dataset}", f"output_dir={tmp_path}", "trainer.save_every='7'"]))
    assert cfg.trainer.save_every == 7 and isinstance(cfg.trainer.save_every, int)
    assert cfg.trainer.lr == pytest.approx(1e-3) and isinstance(cfg.trainer.lr, float)  # resolved through ${model.train.lr}
    from worldpm.eval.scaling.run import run

    with pytest.raises(UserError, match=r"ci=2.0 must be < 1"):
        run(compose("scaling", [f"runs=[{tmp_path}]", f"output_dir={tmp_path / 'o'}", "ci=2"]))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("verb,args,rows", [
    ("train", ["data.path=x"], [("trainer.save_every", "int >=0", "500"), ("data.packing", "packed|shared_prompt|padded", "packed"),
                                ("model.max_length", "int >=8", "1024"), ("data.path", "path (dir)", "x")]),
    ("collect", [], [("source.converter", "html_to_markdown|markdownify", "html_to_markdown"), ("output_dir", "path (output)", "???"),
                     ("dedup.near.threshold", "float >0,<=1", "0.8")]),
    ("serve", [], [("port", "int >=0,<=65535", "5000"), ("batching.window_ms", "float >=0", "5")]),
])
def test_help_lists_every_key_with_its_type_default_and_meaning(no_torch, verb, args, rows):
    result = worldpm(no_torch, verb, "--help", *args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"worldpm {verb}: ")
    for key, kind, default in rows:
        line = next((line for line in lines if line.split() and line.split()[0] == key), None)
        assert line is not None and kind in line and f" {default} " in f"{line} ", (key, line)
    meanings = [line for line in lines if line.startswith("  ") and len(line.split()) > 3]
    assert len(meanings) > 5  # the YAML comments come through as each key's meaning


def test_yaml_comments_follow_nesting_and_continuation_lines(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("# what this config is\n# and more of it\ntop: 1          # the top\n"
                    "group:\n  inner: 'a # not a comment'   # inner's meaning\n"
                    "                                   # continued\n  other: 2\nlast: 3  # last\n")
    assert yaml_comments(path) == {"": "what this config is and more of it", "top": "the top",
                                   "group.inner": "inner's meaning continued", "last": "last"}


def test_every_shipped_config_option_passes_its_schema(dataset, tmp_path):
    """Each model, deepspeed, benchmark and source option as shipped is valid (a typo in a YAML file fails here, not on a
    cluster)."""
    configs = ROOT / "configs"
    for model in sorted(p.stem for p in (configs / "model").glob("*.yaml")):
        for ds in ["null"] + sorted(p.stem for p in (configs / "deepspeed").glob("*.yaml")):
            check("train", compose("train", [f"model={model}", f"deepspeed={ds}", f"data.path={dataset}", f"output_dir={tmp_path}",
                                             "model.path=null"]))
    names = ",".join(sorted(p.stem for p in (configs / "benchmark").glob("*.yaml")))
    cfg = check("eval", compose("eval", [f"benchmark=[{names}]", f"output_dir={tmp_path}",
                                         *[f"benchmark.{n}.path=null" for n in names.split(",")]]))
    assert sorted(cfg.benchmark) == sorted(names.split(","))
    assert OmegaConf.to_container(cfg.benchmark.rewardbench.sections)["safety"]["donotanswer"] == 136
