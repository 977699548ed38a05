"""A non-editable install (a built wheel) finds the Hydra configs and the shipped tokenizer."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_configs_and_assets_and_finds_them_when_installed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("worldpm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"worldpm/configs/score.yaml", "worldpm/configs/model/tiny.yaml", "worldpm/configs/model/qwen2.5-72b.yaml",
            "worldpm/assets/tiny_tokenizer/tokenizer.json", "data_prep/__init__.py"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    code = ("import worldpm.config as c, worldpm.model.tokenizer as t; d = c.config_dir(); print(d); "
            "print(c.compose('score', ['model=qwen2.5-7b', 'input=x']).model.path); print(len(t.load_tokenizer('tiny')))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(site / "worldpm" / "configs") and out[1] == "Qwen/Qwen2.5-7B" and out[2] == "2048"


def test_requirements_are_ranges_and_constraints_txt_pins_a_set_inside_them():
    """setup.py gives ranges (worldpm installs beside peers that pin their own versions); constraints.txt pins the exact set CI
    installs, and every pin lies inside worldpm's ranges."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in requires("worldpm")]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    assert not [str(r) for r in reqs if any(s.operator == "==" for s in r.specifier)]  # no exact pins
    for r in reqs:
        if r.marker is not None and not any(r.marker.evaluate({"extra": e}) for e in ("all", "dev")):
            continue
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{r.name} is required but not pinned in constraints.txt"
        assert r.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {r.name}=={pins[name]} outside {r}"
    transformers = next(r for r in reqs if r.name == "transformers")
    assert transformers.specifier.contains("5.15.0") and transformers.specifier.contains("5.24.0")  # OpenRLHF's pin, the newest
    assert "httpx" not in {r.name for r in reqs if r.marker is None}  # the remote client is the standard library's
