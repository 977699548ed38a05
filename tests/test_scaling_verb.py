"""`worldpm scaling` end to end on hand-made results.json files in the shared layout (3 models x 8 checkpoints x 3 categories)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worldpm.config import compose

ROOT = Path(__file__).resolve().parents[1]
D = np.geomspace(1e3, 1e6, 8).round()
MODELS = {"rm-small": (1.0e6, 4.0e5), "rm-medium": (1.0e7, 6.0e6), "rm-large": (1.0e8, 8.0e7)}  # n_params, non-embedding
ALPHA_ADV = {"rm-small": 0.04, "rm-medium": 0.07, "rm-large": 0.10}
SUBTASK = {"adversarial": ("rewardbench", "chat-hard"), "objective": ("ppe", "math"), "subjective": ("helpsteer2", "helpsteer2")}


def planted_losses(model: str, i: int, seed: int = 0) -> dict:
    """adversarial: a power law at every size; objective: flat except at the largest size (emergence); subjective: flat."""
    rng = np.random.default_rng([seed, i, list(MODELS).index(model)])
    d = D[i]
    noise = np.exp(rng.normal(0.0, 0.004, 3))
    adv = 0.9 * (d / 1e2) ** -ALPHA_ADV[model]
    obj = 0.9 * (d / 1e2) ** -0.08 if model == "rm-large" else 0.62
    subj = 0.66
    return {"adversarial": adv * noise[0], "objective": obj * noise[1], "subjective": subj * noise[2]}


def results_json(model: str, step: int, pairs: float, losses: dict, model_path: str, seed: int = 0) -> dict:
    n_params, n_ne = MODELS[model]
    benchmarks = {}
    for cat, loss in losses.items():
        bench, sub = SUBTASK[cat]
        benchmarks.setdefault(bench, {"subtasks": {}, "official": {}})["subtasks"][sub] = {
            "n": 500, "accuracy": 0.7, "accuracy_ci": [0.66, 0.74], "bt_loss": loss, "bt_loss_ci": [loss - 0.02, loss + 0.02],
            "category": cat}
    return {"model_path": model_path,
            "checkpoint": {"step": step, "pairs_seen": pairs, "tokens_seen": pairs * 100, "model_name": model,
                           "n_params": n_params, "n_params_non_embedding": n_ne, "seed": seed, "data_path": "data/forum",
                           "complete": True},
            "benchmarks": benchmarks,
            "categories": {cat: {"bt_loss": loss, "accuracy": 0.7, "n_subtasks": 1, "subtasks": ["/".join(SUBTASK[cat])]}
                           for cat, loss in losses.items()},
            "config": {"benchmark": list(benchmarks)}}


def write_study(root: Path, seeds=(0,)) -> Path:
    """runs/<model>[-seed]/ holds the training run; evals/<model>[-seed]/<checkpoint>/results.json the eval outputs."""
    for model in MODELS:
        for seed in seeds:
            tag = model if seeds == (0,) else f"{model}-s{seed}"
            run = root / "runs" / tag
            for i, d in enumerate(D):
                step = (i + 1) * 10
                losses = planted_losses(model, i, seed)
                name = f"step-{step:08d}"
                out = root / "evals" / tag / name
                out.mkdir(parents=True)
                (out / "results.json").write_text(json.dumps(results_json(model, step, d, losses, str(run / "checkpoints" / name / "hf"), seed)))
            final = root / "evals" / tag / "final"  # the exported final model: the same point as the last step
            final.mkdir()
            (final / "results.json").write_text(json.dumps(results_json(model, step, D[-1], losses, str(run / "final"), seed)))
    return root / "evals"


def cfg(tmp_path, *overrides):
    return compose("scaling", [f"runs=[{tmp_path / 'evals'}]", f"output_dir={tmp_path / 'out'}", "bootstrap.n=500",
                               "bootstrap.n_saturating=20", *overrides])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    write_study(tmp)
    (tmp / "evals" / "base-model").mkdir()  # an eval of a model that is not a training checkpoint: skipped, reported
    (tmp / "evals" / "base-model" / "results.json").write_text(json.dumps({"model_path": "Qwen/x", "checkpoint": {},
                                                                          "benchmarks": {}, "categories": {}}))
    from worldpm.eval.scaling.run import run

    result = run(cfg(tmp))
    return tmp, result


def test_outputs_exist_and_are_complete(study):
    tmp, result = study
    out = tmp / "out"
    for name in ("fits.json", "report.md", "scaling.log", "scaling_category.png", "scaling_category.svg",
                 "scaling_subtask.png", "scaling_subtask.svg", "model_scaling_category.png", "model_scaling_category.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    assert (out / "scaling_category.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in (out / "scaling_category.svg").read_bytes()[:2000]
    assert json.loads((out / "fits.json").read_text()) == json.loads(json.dumps(result, default=str))
    assert not list(out.glob(".*.tmp*"))  # atomic_path's temporaries: .<stem>.tmp-<pid><suffix>


def test_inputs_accounted_for(study):
    tmp, result = study
    inp = result["inputs"]
    assert inp["n_results"] == 3 * 9 + 1
    assert inp["duplicates"] == 3 * 6  # each model's final/ repeats its last step: 3 categories + 3 subtasks each
    assert inp["n_points"] == 3 * 8 * 6
    assert [s["path"] for s in inp["skipped"]] == [str(tmp / "evals" / "base-model" / "results.json")]
    assert [m["model"] for m in result["models"]] == ["rm-small", "rm-medium", "rm-large"]
    assert all(len(m["runs"]) == 1 for m in result["models"])


def test_fitted_numbers_match_an_independent_fit(study):
    tmp, result = study
    for model in MODELS:
        for i_cat, cat in enumerate(("adversarial", "objective", "subjective")):
            losses = [planted_losses(model, i)[cat] for i in range(len(D))]
            slope, intercept = np.polyfit(np.log(D), np.log(losses), 1)
            r2 = np.corrcoef(np.log(D), np.log(losses))[0, 1] ** 2
            for level, key in (("category", cat), ("subtask", "/".join(SUBTASK[cat]))):
                (fit,) = [f for f in result["data_scaling"] if f["level"] == level and f["key"] == key and f["model"] == model]
                pl = fit["power_law"]
                assert pl["alpha"] == pytest.approx(-slope, rel=1e-9, abs=1e-12)
                assert pl["intercept"] == pytest.approx(intercept, rel=1e-9)
                assert pl["r2"] == pytest.approx(r2, rel=1e-6, abs=1e-9)
                assert fit["n_points"] == 8 and fit["x_range"] == [D[0], D[-1]]
                assert pl["ci_method"] == "bootstrap"
        # the planted adversarial exponents are recovered (0.4% noise): within 0.005
        (adv,) = [f for f in result["data_scaling"] if f["level"] == "category" and f["key"] == "adversarial" and f["model"] == model]
        assert adv["power_law"]["alpha"] == pytest.approx(ALPHA_ADV[model], abs=0.005)
        assert adv["power_law"]["x_c"] == pytest.approx(1e2 * 0.9 ** (1 / ALPHA_ADV[model]), rel=0.5)


def test_verdicts_read_the_planted_patterns(study):
    _, result = study
    v = result["verdicts"]["category"]
    assert v["adversarial"]["pattern"] == "scales"
    assert v["objective"]["pattern"] == "emergent"
    assert v["objective"]["trend_by_model"] == {"rm-small": "flat", "rm-medium": "flat", "rm-large": "decreasing"}
    assert v["subjective"]["pattern"] == "no scaling"
    assert result["verdicts"]["subtask"]["ppe/math"]["pattern"] == "emergent"


def test_model_size_fit_uses_final_checkpoints_and_non_embedding_parameters(study):
    _, result = study
    (adv,) = [f for f in result["model_scaling"] if f["level"] == "category" and f["key"] == "adversarial"]
    ns = [MODELS[m][1] for m in MODELS]
    finals = [planted_losses(m, len(D) - 1)["adversarial"] for m in MODELS]
    assert [p["n"] for p in adv["points"]] == ns and [p["loss"] for p in adv["points"]] == pytest.approx(finals)
    slope, _ = np.polyfit(np.log(ns), np.log(finals), 1)
    assert adv["power_law"]["alpha"] == pytest.approx(-slope, rel=1e-9) and adv["power_law"]["ci_method"] == "t"
    assert "warning" not in adv


def test_report_has_the_tables_and_figures(study):
    tmp, result = study
    report = (tmp / "out" / "report.md").read_text()
    (adv,) = [f for f in result["data_scaling"] if f["level"] == "category" and f["key"] == "adversarial" and f["model"] == "rm-large"]
    assert f"| adversarial | rm-large | 100M | 8 | 1K–1M | {adv['power_law']['alpha']:.3g} [" in report
    assert "| objective | **emergent** | flat | flat | decreasing |" in report
    assert "| subjective | **no scaling** |" in report
    assert "![scaling_category](scaling_category.png)" in report and "## Loss vs model size" in report
    assert "base-model/results.json: no checkpoint.pairs_seen" in report


def test_points_final_and_min_pairs(tmp_path):
    write_study(tmp_path)
    from worldpm.eval.scaling.run import run

    with pytest.raises(Exception) as err:  # one checkpoint per run: nothing to fit
        run(cfg(tmp_path, "points=final", "plots=false"))
    assert "nothing to fit" in str(err.value) and "\n" not in str(err.value)
    result = run(cfg(tmp_path, "min_pairs=10000", "plots=false", "levels=[category]"))
    (fit,) = [f for f in result["data_scaling"] if f["key"] == "adversarial" and f["model"] == "rm-large"]
    assert fit["n_points"] == int((D >= 10000).sum()) and fit["n_excluded"] == int((D < 10000).sum())
    assert not list((tmp_path / "out").glob("*.png"))


def test_seeds_are_separate_runs_and_bayes_reference(tmp_path):
    write_study(tmp_path, seeds=(0, 1))
    from worldpm.eval.scaling.run import run

    result = run(cfg(tmp_path, "levels=[category]", "bayes_loss=0.3", "formats=[png]", "bootstrap.n_saturating=0"))
    assert all(len(m["runs"]) == 2 and m["seeds"] == ["0", "1"] for m in result["models"])
    (fit,) = [f for f in result["data_scaling"] if f["key"] == "adversarial" and f["model"] == "rm-small"]
    assert fit["n_points"] == 16 and fit["n_runs"] == 2
    (adv,) = [f for f in result["model_scaling"] if f["key"] == "adversarial"]
    small = [np.mean([planted_losses("rm-small", len(D) - 1, s)["adversarial"] for s in (0, 1)])]
    assert adv["points"][0]["loss"] == pytest.approx(small[0]) and adv["points"][0]["n_runs"] == 2
    gt = [r for r in result["ground_truth"] if r["key"] == "adversarial" and r["model"] == "rm-small"][0]
    assert gt["final_excess"] == pytest.approx(small[0] - 0.3)
    assert "## Against the known Bayes-optimal loss" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "scaling_category.png").is_file() and not (tmp_path / "out" / "scaling_category.svg").exists()


def test_ground_truth_says_whether_the_bayes_loss_lies_inside_the_l_inf_interval():
    from worldpm.eval.scaling.run import ground_truth

    def fit(l_inf_ci):
        return {"level": "subtask", "key": "heldout/test", "model": "m",
                "saturating": {"l_inf": 0.424, "l_inf_ci": l_inf_ci, "alpha": 1.1}}

    finals = [{"level": "subtask", "key": "heldout/test", "points": [{"model": "m", "loss": 0.433}]}]
    bayes = {"loss": 0.4157, "from": "manifest.json", "applies_to": None}
    (inside,) = ground_truth(bayes, [fit([0.410, 0.435])], finals)
    assert inside["bayes_in_l_inf_ci"] is True and inside["l_inf_minus_bayes"] == pytest.approx(0.424 - 0.4157)
    assert inside["final_excess"] == pytest.approx(0.433 - 0.4157)
    (outside,) = ground_truth(bayes, [fit([0.419, 0.435])], finals)
    assert outside["bayes_in_l_inf_ci"] is False
    (no_interval,) = ground_truth(bayes, [fit(None)], finals)
    assert no_interval["bayes_in_l_inf_ci"] is None


def test_bayes_loss_from_a_dataset_manifest(tmp_path):
    write_study(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"source": "synthetic", "bayes_bt_loss": 0.41}))
    from worldpm.eval.scaling.run import run

    result = run(cfg(tmp_path, "levels=[subtask]", f"bayes_loss={data}", "bayes_key=ppe/math", "plots=false"))
    assert result["bayes"]["loss"] == 0.41 and {r["key"] for r in result["ground_truth"]} == {"ppe/math"}


def worldpm(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "worldpm", "scaling", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)


def test_cli_end_to_end(tmp_path):
    write_study(tmp_path)
    out = worldpm(f"runs=[{tmp_path / 'evals'}]", f"output_dir={tmp_path / 'out'}", "bootstrap.n=200",
                  "bootstrap.n_saturating=20", "levels=[category]", "formats=[png]")
    assert out.returncode == 0, out.stderr
    assert "adversarial: scales" in out.stderr and "objective: emergent" in out.stderr
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert fits["verdicts"]["category"]["subjective"]["pattern"] == "no scaling"


def one_line_error(out, needle):
    """Exit 2 and one error line, last, naming the problem (INFO log lines may precede it)."""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln]
    assert out.returncode == 2 and errors == lines[-1:] and needle in lines[-1], out.stderr
    assert "Traceback" not in out.stderr


def test_cli_degenerate_inputs_are_one_line_errors(tmp_path):
    one_line_error(worldpm(f"runs=[{tmp_path / 'nope'}]", f"output_dir={tmp_path / 'o'}"), "nope")
    (tmp_path / "empty").mkdir()
    one_line_error(worldpm(f"runs=[{tmp_path / 'empty'}]", f"output_dir={tmp_path / 'o'}"), "no results.json")
    # one point per model
    single = tmp_path / "single" / "m" / "step-00000010"
    single.mkdir(parents=True)
    (single / "results.json").write_text(json.dumps(results_json("rm-small", 10, 1000, {"adversarial": 0.6}, "r/checkpoints/step-00000010/hf")))
    one_line_error(worldpm(f"runs=[{tmp_path / 'single'}]", f"output_dir={tmp_path / 'o'}"), "needs at least 2 points, got 1")
    # all checkpoints at the same x
    for step in (20, 30):
        d = tmp_path / "single" / "m" / f"step-{step:08d}"
        d.mkdir()
        (d / "results.json").write_text(json.dumps(results_json("rm-small", step, 1000, {"adversarial": 0.5}, str(d / "hf"))))
    one_line_error(worldpm(f"runs=[{tmp_path / 'single'}]", f"output_dir={tmp_path / 'o'}"), "same x=1000")
    # a non-positive loss names the file and the field
    bad = tmp_path / "bad" / "step-00000010"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps(results_json("rm-small", 10, 1000, {"adversarial": 0.0}, "x")))
    one_line_error(worldpm(f"runs=[{tmp_path / 'bad'}]", f"output_dir={tmp_path / 'o'}"), "categories.adversarial.bt_loss = 0.0")
    one_line_error(worldpm(f"runs=[{tmp_path / 'bad'}]", f"output_dir={tmp_path / 'o'}", "points=some"), "points='some'")
    one_line_error(worldpm(f"output_dir={tmp_path / 'o'}"), "runs")
