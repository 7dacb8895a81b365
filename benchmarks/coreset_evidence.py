"""Issue #18's evidence in one view: every coreset experiment of acs_speed_quality.py, then pooled per selector.

An experiment is one setting's --json file(s) (seeds run separately joined with '+'), read as
`acs_speed_quality.py --from-json` reads them (files of different settings refused). Per experiment and
selector: seeds, step-normalized speed-up, PGD-20 (in percent, the method's own evaluation: `direct` or SLF),
its per-seed difference from random (mean ± sd) and that difference's paired t-test (two-sided p; the seeds' PGD-20
numbers paired by seed), its mean difference from full, its difference from full
training for its own time (`full-time`, the baseline a careful user would pick; mean ± sd over the seeds that
have one), and full training's gain from E/2 to E (the plateau check: mean within 1 point; per seed in
brackets). Where the check holds, the selectors' numbers there are repeated under it. Then, per selector over
all experiments: how many are above random, above random by more than their seed spread (mean > sd), within
2 points of full; every per-seed difference pooled (mean ± standard error, seeds above random, a two-sided
sign test); and the same against full-time, with random's difference from full-time on the same seeds beside
it (a coreset schedule can beat a short full run whatever it selects).

The pooled numbers are not those of independent experiments: the unweighted ablation re-uses the
weighted runs' full and random arms (their random runs count twice), and settings differ in pool, width
and schedule. They answer one question only: is there a small advantage over random that each
experiment's 3-5 seeds are too few to show?

    cd benchmarks && python coreset_evidence.py            # the issue-18 experiments in results/ (EXPERIMENTS)
    cd benchmarks && python coreset_evidence.py results/a.json+results/a_seeds34.json results/b.json

Ends with one line per selector (differences in PGD-20 points):
RESULT pooled selector=<s> experiments=<n> above_random=<k> beyond_spread=<j> within2_of_full=<i> seeds=<m> mean_diff=<x> se=<y> sign_p=<p> full_time_experiments=<t> above_full_time=<u> vs_full_time=<v> random_vs_full_time=<w>
"""
from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from acs_speed_quality import BASELINES, on_plateau, per_seed, pgd, plateau_gaps, read_results, signed_mean_sd
from arms import step_normalized

RESULTS = Path(__file__).parent / "results"
# Issue #18's experiments, all after its part 1 (the lr follows epochs; ACS's minibatch atoms). The earlier
# acs_speed_quality_cpu.json (update-count lr), the class-balanced RCS diagnostic (it uses labels; its own
# format, paired with rcs_e80_sample by seed) and acs_e80_r8_cpu.json (GradMatch and full only; the docs pair
# it with acs_e80's random arm, run at another R) are left out.
EXPERIMENTS = [
    "acs_regime_cpu.json",
    "acs_e80_cpu.json+acs_e80_cpu_seeds34.json",
    "acs_e80_sample_cpu.json+acs_e80_sample_seeds34_cpu.json",
    "acs_plateau500_cpu.json",
    "acs_plateau500_r20_cpu.json",
    "acs_plateau500_e640_cpu.json+acs_plateau500_e640_seeds34_cpu.json",
    "acs_plateau250_cpu.json",
    "acs_plateau250_r20_cpu.json",
    "acs_plateau500_w4_cpu.json+acs_plateau500_w4_seeds34.json",
    "acs_plateau500_w4_unweighted_cpu.json+acs_plateau500_w4_unweighted_seeds34.json",
    "rcs_e80_cpu.json+rcs_e80_cpu_seeds34.json",
    "rcs_e80_sample_cpu.json",
    "rcs_plateau250_cpu.json+rcs_plateau250_seeds34_cpu.json",
    "rcs_plateau250_e640_baselines_cpu.json+rcs_plateau250_e640_seed2_cpu.json",
    "rcs_plateau250_e1280_seed0_cpu.json+rcs_plateau250_e1280_seed1_cpu.json+rcs_plateau250_e1280_seed2_cpu.json"
    "+rcs_plateau250_e1280_seed3_cpu.json+rcs_plateau250_e1280_seed4_cpu.json",
]
NOT_SELECTORS = {"full", "full-half", "random", *BASELINES}


@dataclass
class Arm:
    """One selector in one experiment: its per-seed numbers, paired with the same experiment's full and random."""

    experiment: str
    method: str
    selector: str
    vs_random: list[float]  # PGD-20 points, per seed
    vs_full: list[float]
    vs_full_time: list[float]  # per seed with a full-time run (empty: the experiment has none)
    random_vs_full_time: list[float]  # random's, on the same seeds
    pgd20: float  # mean, percent
    speedup: float  # step-normalized, median over seeds
    plateau_gaps: list[float]  # full at E minus full at E/2, points, per seed with an E/2 run

    @property
    def plateau_gap(self) -> float | None:
        """The plateau check's number: the mean gap over seeds; None without E/2 runs."""
        return statistics.mean(self.plateau_gaps) if self.plateau_gaps else None

    @property
    def plateau(self) -> bool:
        """The benchmark's rule: full training's mean gain from E/2 to E within 1 point."""
        return bool(self.plateau_gaps) and on_plateau(self.plateau_gaps)

    @property
    def t_p(self) -> float | None:
        """Two-sided p of the paired t-test of vs_random against 0; None below 2 seeds or with no spread."""
        return paired_t_p(self.vs_random)

    @property
    def beyond_spread(self) -> bool:
        return len(self.vs_random) > 1 and statistics.mean(self.vs_random) > statistics.stdev(self.vs_random)


def paired_t_p(diffs: list[float]) -> float | None:
    """Two-sided p of a one-sample t-test of paired per-seed differences against 0 (len - 1 degrees of freedom);
    None for fewer than 2 differences or identical ones, where the test is undefined."""
    if len(diffs) < 2 or statistics.stdev(diffs) == 0:
        return None
    return float(stats.ttest_1samp(diffs, 0.0).pvalue)


def p_value(p: float | None) -> str:
    """A p-value with three decimals, '< 0.001' where three decimals would print 0.000, 'n/a' where the test is
    undefined (None)."""
    return "n/a" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_text(test: str, p: float | None) -> str:
    """'<test> p = x' or '<test> p < 0.001' (as p_value), 'n/a' where the test is undefined."""
    value = p_value(p)
    return value if p is None else f"{test} p {value if value.startswith('<') else '= ' + value}"


def setting_label(settings: dict[str, Any]) -> str:
    """The experiment's regime in a few words: pool, batch, E, width, R, atoms, the selector overrides."""
    extra = dict(o.split("=", 1) for o in (settings.get("extra") or "").split(",") if "=" in o)
    parts = [f"{extra.get('data.train_subset', 'all')} img", f"b{extra.get('optim.batch_size', '?')}",
             f"E={extra.get('train.epochs', '?')}"]
    if "model.width" in extra:
        parts.append(f"w{extra['model.width']}")
    if settings.get("every"):
        parts.append(f"R={settings['every']}")
    parts.append(settings.get("unit") or "batch")
    if settings.get("selector_extra"):
        parts.append("unweighted" if "weighted=false" in settings["selector_extra"] else settings["selector_extra"])
    return " ".join(parts)


def experiment_arms(files: list[str]) -> list[Arm]:
    """Every selector arm of one experiment, paired by seed with its full and random arms."""
    rows, _, settings, _ = read_results(files)
    label = setting_label(settings)
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = {(r["arm"], r["seed"]): r for r in rows if r["method"] == method}
        full = {s: r for (a, s), r in mine.items() if a == "full"}
        timed = {s: r for (a, s), r in mine.items() if a == "full-time"}
        gaps = plateau_gaps(list(mine.values()))
        for selector in dict.fromkeys(a for a, _ in mine if a not in NOT_SELECTORS):
            seeds = sorted(s for a, s in mine if a == selector and s in full and ("random", s) in mine)
            if not seeds:
                continue
            arm = [mine[selector, s] for s in seeds]
            on_time = [s for s in seeds if s in timed]
            out.append(Arm(label, method, selector,
                           vs_random=[100 * (pgd(r) - pgd(mine["random", s])) for r, s in zip(arm, seeds)],
                           vs_full=[100 * (pgd(r) - pgd(full[s])) for r, s in zip(arm, seeds)],
                           vs_full_time=[100 * (pgd(mine[selector, s]) - pgd(timed[s])) for s in on_time],
                           random_vs_full_time=[100 * (pgd(mine["random", s]) - pgd(timed[s])) for s in on_time],
                           pgd20=100 * statistics.mean(pgd(r) for r in arm),
                           speedup=statistics.median(step_normalized(full[s], r) for r, s in zip(arm, seeds)),
                           plateau_gaps=gaps))
    return out


def sign_test(positive: int, negative: int) -> float:
    """Two-sided exact sign test p-value (ties left out)."""
    n = positive + negative
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(positive, negative) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def pooled_stats(diffs: list[float]) -> tuple[float, float, int, int, float]:
    """(mean, standard error, how many above 0, below 0, two-sided sign test p) of pooled per-seed differences."""
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    pos, neg = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    return statistics.mean(diffs), se, pos, neg, sign_test(pos, neg)


def pooled(diffs: list[float]) -> str:
    """'+mean ± SE (SE), k above, j below, sign test p' of pooled per-seed differences (points)."""
    mean, se, pos, neg, p = pooled_stats(diffs)
    return f"{mean:+.2f} ± {se:.2f} (SE), {pos} above, {neg} below, {p_text('sign test', p)}"


def _mean(diffs: list[float]) -> str:
    return f"{statistics.mean(diffs):+.2f}" if diffs else "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", help="one experiment per argument: its --json files joined with '+' "
                                                  "(default: EXPERIMENTS, under results/)")
    args = p.parse_args()
    experiments = args.experiments or ["+".join(str(RESULTS / f) for f in e.split("+")) for e in EXPERIMENTS]
    arms = []
    for e in experiments:
        found = experiment_arms(e.split("+"))
        if not found:
            print(f"{e}: no selector arm with full and random arms of the same seed; left out")
        arms += found

    print("| method | setting | selector | seeds | speed-up | PGD-20 % | minus random, per seed (mean ± sd) | paired t p | "
          "minus full | minus full-time (mean ± sd) | full E minus E/2 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        gap = "n/a" if a.plateau_gap is None else f"{a.plateau_gap:+.2f} ({', '.join(f'{g:+.1f}' for g in a.plateau_gaps)})"
        print(f"| {a.method} | {a.experiment} | {a.selector} | {len(a.vs_random)} | {a.speedup:.2f}x | {a.pgd20:.2f} | "
              f"{per_seed(a.vs_random)} | {p_value(a.t_p)} | "
              f"{statistics.mean(a.vs_full):+.2f} | {signed_mean_sd(a.vs_full_time) if a.vs_full_time else 'n/a'} | {gap} |")

    results = []
    print("\npooled per selector (per-seed differences from random, PGD-20 points):")
    for selector in dict.fromkeys(a.selector for a in arms):
        mine = [a for a in arms if a.selector == selector]
        diffs = [d for a in mine for d in a.vs_random]
        above = sum(statistics.mean(a.vs_random) > 0 for a in mine)
        beyond = sum(a.beyond_spread for a in mine)
        near_full = sum(statistics.mean(a.vs_full) >= -2.0 for a in mine)
        mean, se, pos, neg, p_sign = pooled_stats(diffs)
        print(f"  {selector}: {len(mine)} experiments, above random in {above}, beyond their seed spread in {beyond}, "
              f"within 2 points of full in {near_full}; {len(diffs)} seeds: {mean:+.2f} ± {se:.2f} (SE), "
              f"{pos} above random, {neg} below, {len(diffs) - pos - neg} tied, {p_text('sign test', p_sign)}")
        timed = [a for a in mine if a.vs_full_time]
        on_time = [d for a in timed for d in a.vs_full_time]
        random_on_time = [d for a in timed for d in a.random_vs_full_time]
        above_time = sum(statistics.mean(a.vs_full_time) > 0 for a in timed)
        if on_time:
            print(f"    against full training for its time (full-time): above it in {above_time} of {len(timed)} experiments; "
                  f"{len(on_time)} seeds: {pooled(on_time)}; random on the same seeds: {pooled(random_on_time)}")
        results.append(f"RESULT pooled selector={selector} experiments={len(mine)} above_random={above} beyond_spread={beyond} "
                       f"within2_of_full={near_full} seeds={len(diffs)} mean_diff={mean:+.2f} se={se:.2f} "
                       f"sign_p={p_sign:.3f} full_time_experiments={len(timed)} above_full_time={above_time} "
                       f"vs_full_time={_mean(on_time)} random_vs_full_time={_mean(random_on_time)}")
    checked = {(a.experiment, a.method): a for a in arms if a.plateau_gaps}  # one arm per experiment carries its check
    if checked:
        print(f"\nplateau check: full's PGD-20 gain from E/2 to E within 1 point in {sum(a.plateau for a in checked.values())} "
              f"of the {len(checked)} experiments with E/2 runs "
              f"(smallest gain {min(a.plateau_gap or 0.0 for a in checked.values()):+.2f} points)")
    for (experiment, method), held in checked.items():  # the regime of the papers' claim: what the selectors do there
        if not held.plateau:
            continue
        print(f"  held: {method} {experiment}, gain {signed_mean_sd(held.plateau_gaps)} "
              f"(sd over {len(held.plateau_gaps)} seeds); there:")
        for a in arms:
            if (a.experiment, a.method) == (experiment, method):
                print(f"    {a.selector}: {signed_mean_sd(a.vs_random)} over random "
                      f"({'beyond' if a.beyond_spread else 'not beyond'} the seed spread, {p_text('paired t', a.t_p)}), "
                      f"{statistics.mean(a.vs_full):+.2f} from full, {a.speedup:.2f}x")
    print("\n".join(results))


if __name__ == "__main__":
    main()
