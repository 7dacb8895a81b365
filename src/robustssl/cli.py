"""robustssl command line: pretrain | evaluate | postprocess | compare | export | select | quickstart."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import api, dist
from .config import recipe_dir
from .errors import ConfigError, RobustSSLError
from .io import check_output_path
from .train.run_dir import CHECKPOINT


def _split(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def cmd_pretrain(args: argparse.Namespace) -> int:
    if args.config is None and not args.resume:
        raise ConfigError("pretrain needs --config FILE (or a bundled recipe: "
                          + ", ".join(sorted(p.stem for p in recipe_dir().glob("*.yaml"))) + ")")
    result = api.pretrain(args.config, args.out, overrides=args.overrides, resume=args.resume)
    if dist.launched_rank() > 0:  # under torchrun rank 0 reports
        return 0
    if result.nothing_left:
        print(f"nothing left to do: {args.out} finished all its epochs ({result.steps} steps, {result.seconds:.1f}s of "
              f"training); its checkpoint, encoder.safetensors and run.json are unchanged")
        return 0
    times = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(result.phase_seconds.items()))
    print(f"done: {result.steps} steps in {result.seconds:.1f}s ({times}); encoder at {Path(args.out) / 'encoder.safetensors'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.protocol:
        overrides.append(f"eval.protocols=[{','.join(_split(args.protocol) or [])}]")
    if args.attacks:
        overrides.append(f"eval.attacks=[{','.join(_split(args.attacks) or [])}]")
    if args.n_examples is not None:
        overrides.append(f"eval.n_examples={args.n_examples}")
    from .eval.report import format_table, summary_rows

    report = api.evaluate(args.run, overrides=overrides, branch=args.branch, data=args.data, data_root=args.data_root)
    print(format_table(summary_rows(report)))
    t = report.get("transfer")
    if t:
        print(f"transfer: {t['source']['dataset']} {t['source']['image_shape']} -> {t['target']['dataset']}; "
              f"channels: {t['conversion']['channels']}; resize: {t['conversion']['resize']}")
    for change in report.get("report_changes", []):
        print(f"report.json: {change}")
    print(f"report: {Path(report['out']) / 'report.md'}")
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    r = api.postprocess(args.run, args.out, overrides=args.overrides, clusters=args.clusters)
    km, lp, aft = r["kmeans"], r["lp"], r["aft"]
    purity = "" if km["purity_vs_true_labels"] is None else f", purity vs the true labels {km['purity_vs_true_labels']:.3f}"
    print(f"k-means: {km['clusters']} clusters of {km['images']} images (sizes {km['cluster_sizes']}){purity}; "
          f"LP: {lp['epochs']} epochs, pseudo-label accuracy {lp['pseudo_label_accuracy']:.3f}; "
          f"AFT: {aft['epochs']} epochs, final TRADES loss {aft['epoch_loss'][-1]:.4f}"
          f"{' (DIVERGED)' if aft['divergence']['diverged'] else ''}; {r['seconds']:.1f}s")
    for note in r["notes"]:
        print(f"WARNING: {note}")
    print(f"new run folder: {args.out} (encoder.safetensors, postprocess.json); evaluate it with: "
          f"robustssl evaluate --run {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .eval.compare import FILES, table_markdown

    if args.target is not None and not 0 < args.target <= 100:
        raise ConfigError(f"--target is a robust accuracy in percent, 0 < X <= 100; got {args.target:g}")
    result = api.compare(args.runs, args.out, force=args.force, target=None if args.target is None else args.target / 100)
    out = Path(args.out)
    print(table_markdown(result["rows"]))
    curves = result["probe_curves"]
    for note in result["notes"] + curves["notes"]:
        print(f"note: {note}")
    if curves["rows"]:
        print(f"robustness over training (target {100 * curves['target']:.1f}%, {curves['target_rule']}; "
              f"shortest run {curves['shortest_seconds']:.1f} s):")
        for r in curves["rows"]:
            reach = "not reached" if r["time_to_target"] is None else f"{r['time_to_target']:.1f} s"
            at = "-" if r["robust_at_shortest"] is None else f"{100 * r['robust_at_shortest']:.2f}%"
            print(f"  {r['run']}: final probe {100 * r['final_probe_robust']:.2f}% at {r['final_train_seconds']:.1f} s; "
                  f"target reached: {reach}; at the shortest run's time: {at}")
    drawn = [name for name in [*result["figures"].values(), *curves["figures"].values()] if name]
    print(f"written to {out}: {FILES['markdown']}, {FILES['json']}, {', '.join(drawn)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    r = api.export(args.run, args.out, format=args.format, protocol=args.protocol)
    print(f"exported the {r['protocol'].upper()} classifier ({r['why']}) to {r['out']}: "
          + ", ".join(Path(f).name for f in r["files"]) + "; load it with: api.load(\"" + r["out"] + "\") (nothing uploaded)")
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from .quickstart import quickstart

    check_output_path(args.out, "--out")
    quickstart(args.out, overrides=args.overrides, force=args.force)
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.fraction is not None:
        overrides.append(f"coreset.fraction={args.fraction}")
    if args.selector is not None:
        overrides.append(f"coreset.selector={args.selector}")
    r = api.select(args.run, overrides=overrides, out=args.output, force=args.force)
    c = r["coreset"]
    print(f"selected {len(r['sample_ids'])} of {c['pool_size']} images ({100 * c['fraction_real']:.1f}%, unit {c['unit']}) "
          f"with {c['selector']} in {r['seconds']:.2f}s -> {r['path']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .coreset.registry import SELECTORS
    from .data.catalog import dataset_names
    from .eval.registry import ATTACKS, PROTOCOLS
    from .models import BRANCHES

    selectors = [name for name, s in SELECTORS.items() if s.trains_on_subset]
    p = argparse.ArgumentParser(prog="robustssl", description="Adversarially robust self-supervised pretraining and honest evaluation.")
    sub = p.add_subparsers(dest="command", required=True)

    pt = sub.add_parser("pretrain", help="pretrain an encoder from a YAML recipe")
    pt.add_argument("--config", help="YAML file or bundled recipe name (e.g. acl_fmnist_cpu)")
    pt.add_argument("--out", required=True, help="run folder (checkpoint, metrics, encoder, reports)")
    pt.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    pt.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.5")
    pt.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="evaluate a pretrained run (linear probes, PGD, AutoAttack)")
    ev.add_argument("--run", required=True, help="the --out folder of a pretrain run")
    ev.add_argument("--protocol", help=f"comma-separated: {','.join(PROTOCOLS)}")
    ev.add_argument("--attacks", help=f"comma-separated: {','.join(ATTACKS)}")
    ev.add_argument("--n-examples", type=int, help="evaluate on the first N test images (default: the full test set)")
    ev.add_argument("--branch", choices=list(BRANCHES), help="dual-BN branch to evaluate (default: pgd if it was trained)")
    ev.add_argument("--data", help=f"transfer: evaluate on this dataset instead ({', '.join(dataset_names())}); "
                    "images are converted to the encoder's channels and size; the report goes to RUN/transfer/NAME/")
    ev.add_argument("--data-root", help="with --data: the folder holding that dataset's files (default: the usual places)")
    ev.add_argument("overrides", nargs="*", help="eval.key=value overrides (and data.root, data.download, train.device; "
                    "other sections describe how the run was trained and are refused)")
    ev.set_defaults(func=cmd_evaluate)

    pp = sub.add_parser("postprocess", help="DynACL++ post-processing (k-means pseudo-labels, LP-AFT) into a new run folder")
    pp.add_argument("--run", required=True, help="the --out folder of a pretrain run (only read)")
    pp.add_argument("--out", required=True, help="the new run folder (encoder.safetensors, config.yaml, postprocess.json, run.json)")
    pp.add_argument("--clusters", type=int, help="k of k-means (default: the config's postprocess.clusters, 10)")
    pp.add_argument("overrides", nargs="*", help="postprocess.key=value and eval.key=value overrides, e.g. postprocess.aft_epochs=5 "
                    "(and data.root, data.download, train.device; other sections are refused)")
    pp.set_defaults(func=cmd_postprocess)

    cp = sub.add_parser("compare", help="compare evaluated runs: one table (Markdown, JSON) and robustness, loss and time plots")
    cp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders that `robustssl evaluate` has been run on")
    cp.add_argument("--out", default="compare", help="folder for compare.md, compare.json and the PNGs (default: ./compare)")
    cp.add_argument("--target", type=float, help="robust accuracy in percent for the 'time to reach' column of probed runs "
                    "(default: 90%% of the best run's final probe value)")
    cp.add_argument("--force", action="store_true", help="replace an earlier compare.md / compare.json in --out")
    cp.set_defaults(func=cmd_compare)

    ex = sub.add_parser("export", help="an evaluated classifier as a Hugging Face Hub-ready folder (nothing is uploaded)")
    ex.add_argument("--run", required=True, help="a run folder that `robustssl evaluate` has been run on")
    ex.add_argument("--format", default="hf", choices=["hf"], help="hf: config.json, model.safetensors, README.md (model card), "
                    "model_info.json (RobustBench style)")
    ex.add_argument("--protocol", help="whose classifier (default: the one with the highest accuracy under its strongest attack)")
    ex.add_argument("--out", help="the folder to write (default: RUN/hf)")
    ex.set_defaults(func=cmd_export)

    se = sub.add_parser("select", help="run one coreset selection from a run's checkpoint")
    se.add_argument("--run", required=True, help="the --out folder of a pretrain run")
    se.add_argument("--fraction", type=float, help="coreset fraction (default: the run's coreset.fraction)")
    se.add_argument("--selector", "--method", dest="selector", choices=selectors,
                    help="selector (default: the run's coreset.selector; --method: its old name, deprecated)")
    se.add_argument("--output", help="where to write the selection JSON (default: RUN/selection.json); an existing file "
                    "is refused unless --force, a run's own files (config.yaml, checkpoint.pt, ...) always")
    se.add_argument("--force", action="store_true", help="replace an existing --output file (never a run's own file)")
    se.add_argument("overrides", nargs="*", help="coreset.key=value (or coreset.<selector>.key=value) overrides "
                    "(and data.root, data.download, train.device)")
    se.set_defaults(func=cmd_select)

    qs = sub.add_parser("quickstart", help="ACL vs SimCLR on Fashion-MNIST, evaluated with PGD-20 and AutoAttack (CPU, minutes)")
    qs.add_argument("--out", default="runs/quickstart", help="folder for both runs and the comparison table")
    qs.add_argument("--force", action="store_true", help="replace run folders in --out that are not a finished quickstart")
    qs.add_argument("overrides", nargs="*", help="section.key=value overrides applied to both runs")
    qs.set_defaults(func=cmd_quickstart)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RobustSSLError, OSError) as e:  # what a user can fix; anything else is a bug and keeps its traceback
        print(f"robustssl {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as e:
        print(f"robustssl {args.command}: error: out of memory ({one_line(e)[:200]}); lower optim.batch_size (or "
              "eval.batch_size), data.image_size or the model size, or pass data.stream=true", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"robustssl {args.command}: interrupted; {after_interrupt(args)}", file=sys.stderr)
        return 130


def one_line(e: BaseException) -> str:
    """The message on one line; an OSError names its file (disk full, a file where a folder should be)."""
    if isinstance(e, OSError) and not isinstance(e, RobustSSLError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e)
    return " ".join(text.split())


def after_interrupt(args: argparse.Namespace) -> str:
    """What to do next: resume when a checkpoint exists, otherwise start again."""
    if args.command != "pretrain":
        return "run the command again"
    out = Path(args.out)
    if (out / CHECKPOINT).is_file():
        return f"continue with: robustssl pretrain --out {out} --resume"
    return (f"no checkpoint was saved yet, so there is nothing to resume; delete {out} (or choose another --out) "
            "and start the run again")


if __name__ == "__main__":
    sys.exit(main())
