"""bench/rectification_weights.py on a few mixes: both ρ tables print, and within their ranges."""

import subprocess
import sys

from conftest import REPO_ROOT


def run(*args):
    return subprocess.run([sys.executable, "bench/rectification_weights.py", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_released_rho_stays_near_a_thousandth_and_the_normalised_one_spans_zero_to_one():
    result = run("--mixes", "3000")
    assert result.returncode == 0, result.stderr
    released = next(line for line in result.stdout.splitlines() if line.startswith("| released"))
    normalised = next(line for line in result.stdout.splitlines() if line.startswith("| normalised"))
    assert 4e-4 < float(released.split("|")[2]) < 1.2e-3
    assert 0.5 < float(normalised.split("|")[2]) < 1
    assert "head (classes 0, 1, 2)" in result.stdout and "tail (classes 7, 8, 9)" in result.stdout
    refused = run("--counts", "5")
    assert refused.returncode != 0 and "error:" in refused.stderr and "Traceback" not in refused.stderr
