"""The resnet-limits command line: JSON and table output, exit statuses and error messages."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_limits.cli import EXIT_DIVERGED, main

# A small limit simulator for tests that check output format, not accuracy.
SMALL_LIMIT = ["--limit-depth", "8", "--limit-particles", "256"]

STEP_KEYS = {
    "step",
    "loss",
    "embedding_error_mean_ode",
    "embedding_error_limit",
    "output_error_mean_ode",
    "output_error_limit",
}

LINEAR_Y = np.array([[0.62789524], [0.26597976], [-0.05539644]])


def run_main(capsys, argv):
    """Run the command in this process and return its exit status, stdout and stderr."""
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def check_train_json(result, steps):
    assert result["shape"] == {"L": 4, "M": 8, "D": 8}
    assert result["task"] == "paper-tanh"
    assert set(result["bound"]) == {"depth", "width", "embedding"}
    assert result["bound"]["depth"] == pytest.approx(0.25, rel=1e-12)
    assert result["bound"]["width"] == pytest.approx(0.5, rel=1e-12)
    assert result["bound"]["embedding"] == pytest.approx(1 / math.sqrt(8), rel=1e-12)
    assert len(result["steps"]) == steps + 1
    for index, row in enumerate(result["steps"]):
        assert set(row) == STEP_KEYS
        assert row["step"] == index
        for key in STEP_KEYS - {"step"}:
            assert math.isfinite(row[key]), (index, key)
    assert set(result["limit_error_estimate"]) == {"large-D", "fixed-D"}
    for summary in result["limit_error_estimate"].values():
        assert 0 < summary["relative_error_estimate"] < 0.05
        assert summary["depth_points"][1:] == [2 * summary["depth_points"][0], 4 * summary["depth_points"][0]]


def test_train_json(capsys):
    status, out, err = run_main(capsys, ["train", "-L", "4", "-M", "8", "-D", "8", "-K", "2", "--json"])
    assert status == 0
    result = json.loads(out)  # the whole of stdout is one JSON object
    check_train_json(result, steps=2)
    assert result["status"] == "completed"


def test_train_json_subprocess():
    executable = Path(sys.executable).with_name("resnet-limits")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "resnet_limits.cli"]
    completed = subprocess.run(
        [*command, "train", "-L", "4", "-M", "8", "-D", "8", "-K", "2", "--json", *SMALL_LIMIT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    check_train_json(json.loads(completed.stdout), steps=2)


def test_train_table(capsys):
    status, out, err = run_main(capsys, ["train", "-L", "4", "-M", "8", "-D", "8", "-K", "3", *SMALL_LIMIT])
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "task paper-tanh  L=4 M=8 D=8  P=256  status completed"
    assert lines[1].startswith("bound terms: 1/L = 0.25, sqrt(D/(L M)) = 0.5, 1/sqrt(D) = 0.3536")
    assert lines[2].startswith("limits' own output error, relative to the targets (estimated): fixed-D ")
    assert lines[3].split()[:2] == ["step", "loss"]
    rows = [line.split() for line in lines[4:]]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"]
    assert all(len(row) == 6 for row in rows)
    assert all(math.isfinite(float(value)) for row in rows for value in row)
    assert "training" in err  # the progress report goes to stderr
    assert re.search(r"large-D limit +6/6 simulations", err)
    assert re.search(r"training +3/3 steps", err)


def test_limit_linear_first_step(capsys):
    """The large-D limit of paper-linear gives f_0 = 0 and f_1 = 2 eta ||x||^2 y = 0.128 y."""
    status, out, err = run_main(
        capsys, ["limit", "--task", "paper-linear", "--steps", "15", "--limit-particles", "20000", "--json"]
    )
    assert status == 0
    result = json.loads(out)
    assert result["kind"] == "large-D"
    assert result["status"] == "completed"
    steps = result["steps"]
    assert [row["step"] for row in steps] == list(range(16))
    assert all(set(row) == {"step", "loss", "output"} for row in steps)
    assert all(np.shape(row["output"]) == (3, 1) for row in steps)

    # Antithetic particle pairs make the initial drift zero, so f_0 = 0 up to float32 rounding.
    assert np.max(np.abs(steps[0]["output"])) < 1e-6
    assert steps[0]["loss"] == pytest.approx(0.5 * np.sum(LINEAR_Y**2), rel=1e-6)

    # Monte Carlo error with 64 x 20000 particles: over particle seeds 0..7 the relative error of
    # f_1 was 1e-3 on average and 2.2e-3 at most (float32, CPU, simulate_limit), so 4e-3 is the tolerance.
    output = np.array(steps[1]["output"])
    relative_error = np.linalg.norm(output - 0.128 * LINEAR_Y) / np.linalg.norm(0.128 * LINEAR_Y)
    assert relative_error < 4e-3
    # J_1 = 1/2 (1 - 0.128)^2 ||y||^2. The output tolerance allows about 0.2 % on the loss.
    expected_loss = 0.5 * (1 - 0.128) ** 2 * np.sum(LINEAR_Y**2)
    assert steps[1]["loss"] == pytest.approx(expected_loss, rel=1e-2)
    assert steps[15]["loss"] < steps[1]["loss"]


def test_limit_fixed_dim(capsys):
    argv = ["limit", "--dim", "16", "--steps", "2", "--json", *SMALL_LIMIT]
    status, out, _ = run_main(capsys, [*argv, "--seed", "1"])
    assert status == 0
    result = json.loads(out)
    assert result["kind"] == "fixed-D"
    assert result["dim"] == 16
    assert result["seed"] == 1
    assert [row["step"] for row in result["steps"]] == [0, 1, 2]

    _, again_out, _ = run_main(capsys, [*argv, "--seed", "1"])
    _, other_out, _ = run_main(capsys, [*argv, "--seed", "2"])
    _, large_out, _ = run_main(capsys, ["limit", "--steps", "2", "--json", *SMALL_LIMIT])
    outputs = np.array(result["steps"][2]["output"])
    assert json.loads(again_out)["steps"] == result["steps"]
    # The seed draws the embeddings, so another seed gives another Mean ODE.
    assert not np.allclose(np.array(json.loads(other_out)["steps"][2]["output"]), outputs)
    assert not np.allclose(np.array(json.loads(large_out)["steps"][2]["output"]), outputs)
    assert json.loads(large_out)["kind"] == "large-D"


def test_limit_table(capsys):
    status, out, err = run_main(capsys, ["limit", "--task", "paper-linear", "--steps", "2", *SMALL_LIMIT])
    assert status == 0
    assert err.splitlines()[-1].startswith("large-D L'=8 M'=256    1/1 attempts")
    lines = out.splitlines()
    assert lines[0] == "large-D limit of paper-linear  status completed"
    assert lines[1].startswith("depth points L': 8, 16, 32; particles M': 256; estimated RMS error of f: ")
    assert lines[2].split()[:2] == ["step", "loss"]
    assert [line.split()[0] for line in lines[3:]] == ["0", "1", "2"]
    assert all(len(line.split()) == 5 for line in lines[3:])  # step, loss, 3 outputs


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["train", "-L", "0"], "--depth"),
        (["train", "-M", "-1"], "--width"),
        (["train", "-D", "0"], "--dim"),
        (["train", "-K", "0"], "--steps"),
        (["train", "--lr", "-1"], "--lr"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--alpha", "inf"], "--alpha"),
        (["train", "--limit-particles", "7"], "--limit-particles"),
        (["train", "--limit-particles", "1"], "set --limit-particles to 88 or another multiple of 8"),
        (["limit", "--limit-particles", "0"], "set --limit-particles to 88 or another multiple of 8"),
        (["train", "--limit-depth", "0"], "--limit-depth"),
        (["train", "--memory-budget", "0"], "--memory-budget"),
        (["train", "-L", "4096", "-M", "4096", "-D", "4096"], "--memory-budget"),
        (["limit", "--dim", "0"], "--dim"),
        (["limit", "--steps", "-2"], "--steps"),
        (["limit", "--seed", "-1"], "seed"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else value,
)
def test_invalid_setting_exits_2(capsys, argv, option):
    status, out, err = run_main(capsys, argv)
    assert status == 2
    assert out == ""
    assert err.startswith("resnet-limits: error: ")
    assert option in err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["train", "-L", "2.5"], "--depth"),
        (["train", "--task", "mnist"], "--task"),
        (["train", "--activation", "relu"], "--activation"),
        (["limit", "--dtype", "float16"], "--dtype"),
    ],
)
def test_unparsable_argument_exits_2(capsys, argv, option):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["sweep", "-L", "2", "-M", "2", "-D", "4", "--out", ""],
        ["reproduce", "all", "--quick", "--out", ""],
        ["fit", " "],
    ],
)
def test_empty_directory_exits_2(capsys, argv):
    with pytest.raises(SystemExit) as error:
        main(argv)
    assert error.value.code == 2
    assert "invalid directory" in capsys.readouterr().err


def test_memory_error_reports_gib(capsys):
    status, _, err = run_main(capsys, ["train", "-L", "4096", "-M", "4096", "-D", "4096"])
    assert status == 2
    assert "GiB" in err


def test_train_divergence_exits_3(capsys):
    status, out, err = run_main(
        capsys, ["train", "-L", "4", "-M", "8", "-D", "8", "-K", "3", "--lr", "1e6", "--json", *SMALL_LIMIT]
    )
    assert status == EXIT_DIVERGED == 3
    assert "diverged at step 1" in err
    assert "raise --alpha (the raw step is eta L M D / alpha^2)" in err
    result = json.loads(out)
    assert result["status"] == "diverged"
    assert result["diverged_at_step"] == 1
    assert [row["step"] for row in result["steps"]] == [0]
    # Both limits diverge at this rate too, and a diverged limit gets no error estimate.
    assert result["limit_diverged_at_step"] == {"large-D": 2, "fixed-D": 2}
    assert result["limit_error_estimate"] == {}


def test_limit_divergence_exits_3(capsys):
    status, out, err = run_main(capsys, ["limit", "--steps", "3", "--lr", "1e6", "--json", *SMALL_LIMIT])
    assert status == 3
    assert "diverged at step" in err
    result = json.loads(out)
    assert result["status"] == "diverged"
    assert len(result["steps"]) == result["diverged_at_step"]


def test_limit_tolerance_met(capsys):
    argv = ["limit", "--task", "paper-linear", "--tol", "1e-6", "--dtype", "float64",
            "--limit-depth", "4", "--limit-particles", "64", "--json"]
    status, out, _ = run_main(capsys, argv)
    result = json.loads(out)
    assert status == 0
    assert result["status"] == "completed"
    assert result["error_estimate"] <= 1e-6
    assert result["settings"]["tol"] == 1e-6
    assert len(result["depth_points"]) == 3
    assert result["depth_points"][0] > 4


def test_limit_tolerance_not_reached(capsys):
    # float32 rounding keeps the estimate near 1e-6, so 1e-12 cannot be met.
    argv = ["limit", "--task", "paper-linear", "--tol", "1e-12", "--steps", "2",
            "--limit-depth", "4", "--limit-particles", "64", "--json"]
    status, out, err = run_main(capsys, argv)
    result = json.loads(out)
    assert status == 4
    assert result["status"] == "tolerance not reached"
    assert len(result["steps"]) == 3
    assert "above the tolerance" in err


def test_limit_rejects_bad_tolerance(capsys):
    status, _, err = run_main(capsys, ["limit", "--tol", "0"])
    assert status == 2
    assert "tol must be positive and finite, got 0.0; set --tol to a value such as 0.001" in err


# -- sweep, fit and shape -----------------------------------------------------------------------

SWEEP_AXES = ["-L", "2", "-M", "2,4", "-D", "12", "--seeds", "2", "-K", "2", "--limit-tol", "1",
              "--limit-depth", "4", "--limit-particles", "256", "--mean-ode-depth", "4", "--mean-ode-particles", "64"]


def test_sweep_resumes_and_fits(capsys, tmp_path):
    out = str(tmp_path / "store")
    status, stdout, stderr = run_main(capsys, ["sweep", *SWEEP_AXES, "--out", out])
    assert status == 0, stderr
    assert stdout.startswith(f"computed 4 configurations in ")
    assert stdout.rstrip().endswith(f"skipped 0 already in {out} (4 in all); 0 failed, 0 diverged")
    assert "sweep 4/4 configurations" in stderr

    status, stdout, stderr = run_main(capsys, ["sweep", *SWEEP_AXES, "--out", out])
    assert status == 0, stderr
    assert stdout == f"nothing to compute: all 4 configurations are already in {out}\n"

    status, stdout, _ = run_main(capsys, ["fit", out, "--json"])
    assert status == 0
    result = json.loads(stdout)
    assert result["num_rows"] == 4
    assert [entry["term"] for entry in result["laws"]["embedding"]["constants"]] == ["width", "embedding"]
    assert [row["axis"] for row in result["slopes"]["embedding"]] == ["M"]

    status, stdout, _ = run_main(capsys, ["fit", out])
    assert status == 0
    assert stdout.splitlines()[0] == f"{out}: 4 runs at last step K, errors against the large-D limit"

    status, stdout, _ = run_main(capsys, ["fit", out, "--reference", "mean_ode"])
    assert status == 0
    assert stdout.splitlines()[0] == f"{out}: 4 runs at last step K, errors against the fixed-D Mean ODE"


def test_sweep_rejects_other_spec(capsys, tmp_path):
    out = str(tmp_path / "store")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text(
        json.dumps({"format": 1, "spec": {"shapes": [[2, 2, 12]], "seeds": [0], "settings": [{"task": "paper-tanh"}],
                                          "limit_tol": 1.0, "limit_start": {"depth_points": 4, "particles": 256},
                                          "mean_ode": {"depth_points": 8, "particles": 64}}})
    )
    status, _, err = run_main(capsys, ["sweep", *SWEEP_AXES, "--out", out])
    assert status == 2
    assert "different sweep" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-L", "2", "-M", "2,x", "-D", "12"], "invalid M axis"),
        (["-L", "2", "-M", "2", "-D", "log:1:5:9"], "only 5 integers"),
        (["-L", "2", "-M", "2"], "missing -D"),
        (["--path", "1/3", "-L", "2"], "drop -L"),
        (["--path", "3/2"], "outside [0, 1]"),
        (["-L", "2", "-M", "2", "-D", "12", "--seeds", "0"], "--seeds"),
        (["-L", "2", "-M", "2", "-D", "12", "--lr", "0.1,-1"], "--lr"),
        (["-L", "2", "-M", "2", "-D", "12", "--jobs", "0"], "--jobs must be 1 or more, got 0"),
        (["-L", "2", "-M", "2", "-D", "12", "--seeds", "99999999999"], "seed count must be at most 10000"),
        (["-L", "2", "-M", "2", "-D", "12", "--lr", "1,1"], "1 given more than once"),
        (["-L", "2", "-M", "2", "-D", "12", "--alpha", "0.5,2,0.5"], "0.5 given more than once"),
        (["-L", "2", "-M", "2", "-D", "12", "--budgets", "1e3"], "add --path"),
    ],
)
def test_sweep_invalid_input_exits_2(capsys, tmp_path, argv, message):
    status, _, err = run_main(capsys, ["sweep", *argv, "--out", str(tmp_path / "store")])
    assert status == 2
    assert message in err
    assert not (tmp_path / "store").exists()


def test_fit_missing_store_exits_2(capsys, tmp_path):
    status, _, err = run_main(capsys, ["fit", str(tmp_path)])
    assert status == 2
    assert "has no manifest.json" in err


def test_shape_table_literal(capsys):
    status, out, _ = run_main(capsys, ["shape", "--budget", "1e6"])
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "embedding law, budget P = 1000000: L=10 M=1000 D=100 (P = 1000000)"
    assert lines[1] == "exponents of P for L, M, D: 1/6, 1/2, 1/3; the bound decays as P^(-1/6)"
    assert lines[-1].split() == ["bound", "(sum)", "=", "0.344"]


def test_shape_json_output_law(capsys):
    status, out, _ = run_main(capsys, ["shape", "-P", "1e5", "--law", "output", "--json"])
    assert status == 0
    result = json.loads(out)
    assert result["shape"] == {"L": 10, "M": 100, "D": 100}
    assert result["exponents"]["L"] == 0.2
    assert result["exponents"]["D"] == 0.4
    assert [term["weighted"] for term in result["terms"]] == pytest.approx([0.01, 0.015, 0.09], rel=1e-12)
    assert result["bound"] == pytest.approx(0.115, rel=1e-12)


def test_shape_on_path(capsys):
    status, out, _ = run_main(capsys, ["shape", "-P", "1e8", "--path", "1/4", "--json"])
    assert status == 0
    result = json.loads(out)
    assert result["shape"] == {"L": 10, "M": 100000, "D": 100}
    assert result["rate"] == pytest.approx(1 / 8, abs=1e-9)


def test_shape_on_flat_path(capsys):
    status, out, _ = run_main(capsys, ["shape", "-P", "1e6", "--path", "1/2"])
    assert status == 0
    assert "L=32 M=31 D=1000" in out
    assert "exponents of P for L, M, D: 1/4, 1/4, 1/2; the bound does not decay with P (rate 0)" in out


def test_shape_rejects_huge_budget(capsys):
    status, _, err = run_main(capsys, ["shape", "-P", "1e300", "--json"])
    assert status == 2
    assert "parameter budget must be at most 1e+15, got 1e+300" in err


def test_shape_rejects_small_budget(capsys):
    status, _, err = run_main(capsys, ["shape", "-P", "0.5"])
    assert status == 2
    assert "budget" in err


def test_sweep_out_file_exits_2(capsys, tmp_path):
    target = tmp_path / "afile"
    target.write_text("")
    status, out, err = run_main(capsys, ["sweep", "--depth", "2", "--width", "2", "--dim", "2", "--out", str(target)])
    assert status == 2
    assert f"cannot write {target}: Not a directory" in err
    assert "Traceback" not in err


def test_sweep_out_broken_link_exits_2(capsys, tmp_path):
    target = tmp_path / "link"
    target.symlink_to(tmp_path / "missing")
    status, _, err = run_main(capsys, ["sweep", "--depth", "2", "--width", "2", "--dim", "2", "--out", str(target)])
    assert status == 2
    assert f"cannot write {target}: it is a link to a missing path" in err


def test_sweep_over_budget_leaves_no_store(capsys, tmp_path):
    out_dir = tmp_path / "sweep"
    status, out, err = run_main(
        capsys, ["sweep", "--depth", "2", "--width", "99999999", "--dim", "9999", "--out", str(out_dir)]
    )
    assert status == 2
    assert "over the memory budget" in err
    assert not out_dir.exists()


def test_limit_tolerance_over_budget_exits_4(capsys):
    # The first attempt fits in 0.001 GiB; the grown one (4 times the particles) does not.
    status, out, err = run_main(
        capsys,
        ["limit", "--tol", "1e-9", "--limit-depth", "8", "--limit-particles", "256", "--memory-budget", "0.001", "--json"],
    )
    assert status == 4
    assert "the next attempt does not fit" in err
    assert "L' = 8 and M' = 1024 needs about" in err
    assert json.loads(out)["status"] == "tolerance not reached"


def test_shape_path_growing_bound_has_one_sign(capsys):
    status, out, err = run_main(capsys, ["shape", "--budget", "1e6", "--path", "0.6"])
    assert status == 0
    assert "the bound grows as P^(1/10)" in out
    assert "P^--" not in out
