"""benchmarks/coreset_evidence.py: the pooled view of the coreset experiments pairs each selector run with the
full, random and full-time runs of its own seed and experiment, joins seeds run into separate files, refuses files
of different settings, its sign test is the exact binomial one and its paired t-test the Student one."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SETTINGS = {"extra": "data.train_subset=500,optim.batch_size=32,train.epochs=320,model.width=4", "fraction": None,
            "kappa": 0.5, "every": None, "unit": "batch", "schedule": "auto", "selector_extra": ""}


@pytest.fixture
def evidence(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import coreset_evidence
    return coreset_evidence


def _row(seed: int, arm: str, pgd20: float, steps: int = 100, train_s: float = 10.0, selection_s: float = 0.0) -> dict:
    return {"seed": seed, "method": "pgd_at", "arm": arm, "epochs": 320, "run": f"runs/x/pgd_at-{arm}-{seed}",
            "train_s": train_s, "selection_s": selection_s, "steps": steps, "phase_seconds": {}, "total_s": train_s,
            "protocols": {"direct": {"clean": 0.7, "pgd20": pgd20, "autoattack": pgd20, "sanity_passed": 1.0}}}


def _write(path: Path, rows: list[dict], **settings) -> str:
    path.write_text(json.dumps({"machine": "x86_64 test CPU (AVX2, 2 threads), 2 cores, torch 2", "threads": 2,
                                "settings": {**SETTINGS, **settings}, "bounds": {}, "rows": rows}))
    return str(path)


def test_selector_runs_are_paired_by_seed_across_files(evidence, tmp_path):
    first = _write(tmp_path / "a.json", [_row(0, "full", 0.60, steps=400), _row(0, "full-half", 0.58),
                                         _row(0, "gradmatch", 0.55, train_s=12.0, selection_s=2.0), _row(0, "random", 0.54),
                                         _row(1, "full", 0.62, steps=400), _row(1, "full-half", 0.60),
                                         _row(1, "gradmatch", 0.53, train_s=12.0, selection_s=2.0), _row(1, "random", 0.56)])
    # seed 2 run later into its own file, and a selector row whose seed has no random run: left out of the pairs
    second = _write(tmp_path / "b.json", [_row(2, "full", 0.61, steps=400), _row(2, "gradmatch", 0.57, train_s=12.0,
                                                                                   selection_s=2.0), _row(2, "random", 0.55),
                                          _row(3, "full", 0.61, steps=400), _row(3, "gradmatch", 0.70)])
    (arm,) = evidence.experiment_arms([first, second])
    assert (arm.method, arm.selector, arm.experiment) == ("pgd_at", "gradmatch", "500 img b32 E=320 w4 batch")
    assert arm.vs_random == pytest.approx([1.0, -3.0, 2.0])
    assert arm.vs_full == pytest.approx([-5.0, -9.0, -4.0])
    assert arm.pgd20 == pytest.approx(55.0)
    assert arm.speedup == pytest.approx(400 / (100 * 12.0 / 10.0))  # selection time counted in the arm's own steps
    assert arm.plateau_gaps == pytest.approx([2.0, 2.0])  # seeds 0 and 1 have E/2 runs
    assert arm.plateau_gap == pytest.approx(2.0)
    assert not arm.plateau
    assert not arm.beyond_spread


def test_the_plateau_check_is_the_mean_gap_and_names_the_experiments_where_it_holds(evidence, tmp_path, monkeypatch,
                                                                                        capsys):
    # full gains +1.8 and -0.6 points from E/2 to E: a mean of +0.6 holds the rule although one seed alone does not
    flat = _write(tmp_path / "flat.json", [_row(0, "full", 0.618), _row(0, "full-half", 0.60), _row(0, "craig", 0.55),
                                           _row(0, "random", 0.56), _row(1, "full", 0.614), _row(1, "full-half", 0.62),
                                           _row(1, "craig", 0.54), _row(1, "random", 0.57)])
    climbing = _write(tmp_path / "climbing.json", [_row(0, "full", 0.62), _row(0, "full-half", 0.60),
                                                   _row(0, "gradmatch", 0.55), _row(0, "random", 0.56)], every=20)
    (arm,) = evidence.experiment_arms([flat])
    assert arm.plateau_gaps == pytest.approx([1.8, -0.6])
    assert arm.plateau
    assert not evidence.experiment_arms([climbing])[0].plateau
    monkeypatch.setattr("sys.argv", ["coreset_evidence.py", flat, climbing])
    evidence.main()
    out = capsys.readouterr().out
    assert "within 1 point in 1 of the 2 experiments" in out
    held = [line for line in out.splitlines() if line.startswith("  held:")]
    assert held == ["  held: pgd_at 500 img b32 E=320 w4 batch, gain +0.60 ± 1.70 (sd over 2 seeds); there:"]
    # craig minus random: -1 and -3 points, t = -2 on 1 degree of freedom (Cauchy): p = 1 - 2 atan(2) / pi
    assert ("    craig: -2.00 ± 1.41 over random (not beyond the seed spread, paired t p = 0.295), -7.10 from full, "
            in out)
    assert "| -2.00 ± 1.41 (-1.0, -3.0) | 0.295 | -7.10 |" in out
    assert "gradmatch: " not in out.split("held:")[1]
    assert "| +0.60 (+1.8, -0.6) |" in out


def test_files_of_different_settings_are_refused(evidence, tmp_path):
    first = _write(tmp_path / "a.json", [_row(0, "full", 0.6), _row(0, "random", 0.5), _row(0, "craig", 0.5)])
    second = _write(tmp_path / "b.json", [_row(1, "full", 0.6), _row(1, "random", 0.5), _row(1, "craig", 0.5)], every=20)
    with pytest.raises(SystemExit, match="different every"):
        evidence.experiment_arms([first, second])


def test_sign_test_is_the_exact_two_sided_binomial(evidence):
    assert evidence.sign_test(5, 0) == pytest.approx(2 / 32)
    assert evidence.sign_test(3, 3) == 1.0
    assert evidence.sign_test(23, 12) == pytest.approx(2 * sum(math.comb(35, k) for k in range(13)) / 2 ** 35)
    assert evidence.sign_test(0, 0) == 1.0


def test_paired_t_test_is_students_two_sided_one_sample_test(evidence):
    # 1 degree of freedom: the t distribution is Cauchy, so p = 1 - 2 atan(|t|) / pi in closed form
    assert evidence.paired_t_p([1.0, 3.0]) == pytest.approx(1 - 2 * math.atan(2.0) / math.pi)
    # 2 degrees of freedom: p = 1 - |t| / sqrt(2 + t^2); diffs 1, 2, 3 give t = 2 / (1 / sqrt(3))
    t = 2 * math.sqrt(3)
    assert evidence.paired_t_p([1.0, 2.0, 3.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert evidence.paired_t_p([-1.0, -2.0, -3.0]) == pytest.approx(evidence.paired_t_p([1.0, 2.0, 3.0]))
    assert evidence.paired_t_p([2.0]) is None  # one seed: no spread to test against
    assert evidence.paired_t_p([1.0, 1.0]) is None  # identical differences: t undefined
    assert evidence.p_text("paired t", None) == "n/a"
    assert evidence.p_text("paired t", 0.0004) == "paired t p < 0.001"
    assert evidence.p_text("sign test", 0.0625) == "sign test p = 0.062"
    assert evidence.p_value(0.0004) == "< 0.001"  # the table's cell, never 0.000
    assert evidence.p_value(0.0151) == "0.015" and evidence.p_value(None) == "n/a"


def test_full_time_is_paired_by_seed_with_the_selector_and_random_and_pooled(evidence, tmp_path, monkeypatch, capsys):
    # seed 1 has no full-time run: the full-time differences are those of seeds 0 and 2 only
    rows = [_row(0, "full", 0.62), _row(0, "full-time", 0.56), _row(0, "rcs", 0.58), _row(0, "random", 0.55),
            _row(1, "full", 0.62), _row(1, "rcs", 0.50), _row(1, "random", 0.55),
            _row(2, "full", 0.62), _row(2, "full-time", 0.57), _row(2, "rcs", 0.56), _row(2, "random", 0.58)]
    done = _write(tmp_path / "a.json", rows)
    (arm,) = evidence.experiment_arms([done])
    assert arm.vs_full_time == pytest.approx([2.0, -1.0])
    assert arm.random_vs_full_time == pytest.approx([-1.0, 1.0])
    assert arm.vs_random == pytest.approx([3.0, -5.0, -2.0])
    monkeypatch.setattr("sys.argv", ["coreset_evidence.py", done])
    evidence.main()
    out = capsys.readouterr().out
    assert "| +0.50 ± 2.12 | n/a |" in out  # the table's minus full-time column, then no E/2 runs
    assert ("against full training for its time (full-time): above it in 1 of 1 experiments; 2 seeds: +0.50 ± 1.50 (SE), "
            "1 above, 1 below, sign test p = 1.000; random on the same seeds: +0.00 ± 1.00 (SE)") in out
    assert out.rstrip().endswith("full_time_experiments=1 above_full_time=1 vs_full_time=+0.50 random_vs_full_time=+0.00")
