"""The `difflsq` command: solve, malformed input, and the demo."""
import gzip
import os
import subprocess

import numpy as np
import pytest
import scipy.io
import scipy.sparse

CLI = os.environ.get("DIFFLSQ_CLI")
pytestmark = pytest.mark.skipif(not CLI or not os.path.exists(CLI), reason="CLI not built")


def run(*args, check=True):
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr + p.stdout
    return p


def test_solve_matches_dense_lstsq_and_writes_x(tmp_path):
    rng = np.random.default_rng(1)
    a = scipy.sparse.random(80, 30, density=0.3, random_state=2, format="coo") \
        + scipy.sparse.eye(80, 30)
    b = rng.standard_normal(80)
    scipy.io.mmwrite(tmp_path / "A.mtx", a)
    with gzip.open(tmp_path / "A.mtx.gz", "wb") as f:
        f.write((tmp_path / "A.mtx").read_bytes())
    scipy.io.mmwrite(tmp_path / "b.mtx", b.reshape(-1, 1))
    ref = np.linalg.lstsq(a.toarray(), b, rcond=None)[0]
    for method in ("lsqr", "lsmr", "cgls"):
        out = tmp_path / f"x_{method}.mtx"
        p = run("solve", tmp_path / "A.mtx.gz", tmp_path / "b.mtx", "--method", method,
                "--atol", "1e-12", "--btol", "1e-12", "--maxiter", 300, "--out", out)
        assert "least-squares solution is good enough" in p.stdout or "small enough" in p.stdout
        assert "iterations" in p.stdout and "time" in p.stdout
        x = np.asarray(scipy.io.mmread(out)).ravel()
        np.testing.assert_allclose(x, ref, rtol=1e-8)


def test_solve_without_rhs_reports_error_against_ones(tmp_path):
    a = scipy.sparse.random(50, 20, density=0.4, random_state=3) + scipy.sparse.eye(50, 20)
    scipy.io.mmwrite(tmp_path / "A.mtx", a)
    p = run("solve", tmp_path / "A.mtx", "--atol", "1e-12", "--btol", "1e-12", "--scale")
    err = float(p.stdout.split("|x - ones|/|ones|")[1].split()[0])
    assert err < 1e-9


@pytest.mark.parametrize("text, line", [
    ("%%MatrixMarket matrix coordinate real general\n3 3 2\n1 1 1.0\n4 1 2.0\n", 4),
    ("%%MatrixMarket matrix coordinate real general\n3 3 2\n1 1 1.0\n", 4),
    ("%%MatrixMarket matrix coordinate real general\n3 3 1\n1 1 abc\n", 3),
    ("%%MatrixMarket matrix coordinate real general\n3 3 1\n1 1 nan\n", 3),
    ("%%MatrixMarket matrix banana real general\n3 3 1\n1 1 1\n", 1),
    ("not a matrix market file\n", 1),
])
def test_malformed_files_name_the_line_and_never_crash(tmp_path, text, line):
    (tmp_path / "bad.mtx").write_text(text)
    p = run("solve", tmp_path / "bad.mtx", check=False)
    assert p.returncode == 1
    assert f"bad.mtx:{line}:" in p.stderr


def test_missing_file_and_bad_options(tmp_path):
    p = run("solve", tmp_path / "nope.mtx", check=False)
    assert p.returncode == 1 and "nope.mtx" in p.stderr
    p = run("solve", tmp_path / "nope.mtx", "--method", "qr", check=False)
    assert p.returncode != 0
    p = run("solve", tmp_path / "nope.mtx", "--maxiter", "-3", check=False)
    assert p.returncode != 0 and "maxiter" in p.stderr + p.stdout


def test_unwritable_out_and_absurd_sizes_fail_before_solving(tmp_path):
    a = scipy.sparse.random(50, 20, density=0.4, random_state=3) + scipy.sparse.eye(50, 20)
    scipy.io.mmwrite(tmp_path / "A.mtx", a)
    for out in (tmp_path / "no-such-dir" / "x.mtx", tmp_path):
        p = run("solve", tmp_path / "A.mtx", "--out", out, check=False)
        assert p.returncode == 1 and "--out" in p.stderr
        assert "iterations" not in p.stdout  # refused before the solve
    assert not (tmp_path / "no-such-dir").exists()
    p = run("solve", tmp_path / "A.mtx", "--out", tmp_path / "x.mtx")  # a writable one works
    assert (tmp_path / "x.mtx").exists()
    # 60 bytes declaring 2^31 - 1 rows: refused with the sizes, not killed by the kernel.
    (tmp_path / "huge.mtx").write_text(
        "%%MatrixMarket matrix coordinate real general\n2147483647 3 1\n1 1 1.0\n")
    p = run("solve", tmp_path / "huge.mtx", check=False)
    assert p.returncode == 1 and "2147483647 x 3" in p.stderr and "GB" in p.stderr


def test_demo_reconstructs_the_phantom(tmp_path):
    p = run("demo", "--size", "48", "--angles", "60", "--out", tmp_path)
    errors = [float(l.split(":")[1]) for l in p.stdout.splitlines()
              if "relative error against the ground truth" in l]
    assert len(errors) == 2 and all(e < 0.35 for e in errors)
    assert "passed" in p.stdout
    for name in ("phantom.png", "reconstruction_lsqr.png", "reconstruction_lsmr.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
