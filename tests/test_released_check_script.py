"""The released-weights check script runs end to end on a directory in the released layout (tiny backbone)."""
import subprocess
import sys
from pathlib import Path

from tests.conftest import make_tiny
from tests.test_reward_model import write_released_worldpm_dir

ROOT = Path(__file__).resolve().parents[1]


def test_check_script_reports_each_readout(tmp_path):
    write_released_worldpm_dir(make_tiny(), tmp_path / "WorldPM-72B")
    out = subprocess.run([sys.executable, "scripts/check_released_worldpm.py", "--model-path", str(tmp_path / "WorldPM-72B"),
                          "--dtype", "float32", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    # random tiny weights match nothing: exit 1, but every readout is reported
    assert out.returncode == 1, out.stderr
    for name in ("reward_token", "before_reward_token", "readme_path", "matching readouts: none"):
        assert name in out.stdout
    assert "readout chosen for it=before_reward_token" in out.stdout
