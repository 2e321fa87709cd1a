"""The benchmark scripts live in benchmarks/, outside the library: each still starts from a checkout
(its imports of eqprop and of the shared benchmark modules resolve) whatever the working directory."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench.py", "convergence.py", "gpu_paper_cnn.py"])
def test_benchmark_script_starts_from_any_directory(script, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--quick" in out.stdout


def test_the_library_holds_no_benchmark_tool():
    assert not (ROOT / "eqprop" / "bench.py").exists()
    # eqprop is a namespace package, so a stale import could still resolve through another checkout
    sources = list((ROOT / "benchmarks").glob("*.py")) + list((ROOT / "eqprop").rglob("*.py"))
    stale = [str(p) for p in sources if "eqprop.bench" in p.read_text()]
    assert not stale, stale


def test_estimator_rows_time_each_estimator_against_symmetric(tmp_path):
    import json

    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--configs", "", "--quick",
                        "--estimators", "n_point,holomorphic,cep", "--repeat", "1", "--threads", "1",
                        "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads(out.read_text())["estimators"]
    assert [r["estimator"] for r in rows] == ["symmetric", "n_point", "holomorphic", "cep"]
    assert rows[0]["vs_symmetric"] == 1.0 and all(r["s_step"] > 0 for r in rows)
    assert "| holomorphic(4) |" in p.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--configs", "",
                          "--estimators", "nope"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--estimators ['nope']" in bad.stderr
