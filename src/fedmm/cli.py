"""The `fedmm` command.

    fedmm run [-m] [key=value ...]        federated training (the default job with no overrides)
    fedmm centralized [key=value ...]     the centralized baseline on the same data and model
    fedmm config [--help] [key=value ...] print the composed configuration (--help: every option, described)
    fedmm info [key=value ...]            the model's parameter counts and update size, without any weights
    fedmm prepare mmimdb SOURCE OUT ...   split MM-IMDb (any layout) into per-site folders (--help for options)
    fedmm flower app OUT [key=value ...]  a Flower App folder for a SuperLink/SuperNode deployment (`flwr run OUT`)
    fedmm flower certs OUT --host H ...   a CA, the SuperLink's TLS certificate and SuperNode keys for a test
    fedmm export nvflare OUT [key=value ...] [--site NAME[=DATA_ROOT] ...]
                                          an NVFlare job folder (`nvflare job submit -j OUT`)
    fedmm report RUN_DIR                  (re)write report.md and metrics.png of a run
    fedmm export model RUN_DIR OUT [--checkpoint best|last|N] [--format fedmm|peft|merged]
                                          the run's model in a format others load, with a model card
    fedmm predict MODEL --input FILE [--output predictions.csv]
                                          the trained model (a run or an export) on new image (+ text) rows
    fedmm evaluate RUN_DIR [--checkpoint best|last|N] [task.key=value ...]
                                          score a run's model on its test split or on other data (evaluation.json)
    fedmm site [SITE_YAML] [--settings CONFIG_YAML]
                                          a site's policy; would this site take that run's settings (exit 3: no)

User errors print one line (`error: ...`) and exit 2; nothing already written is removed. Anything unexpected (a
bug) prints one line too, exits 1, and leaves its traceback in the run directory's error.txt (or, outside a run, in
the user's own ~/.fedmm/errors/; FEDMM_DEBUG=1 prints it instead). Ctrl-C exits 130 and SIGTERM 143, each with
one line naming the run to resume.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from fedmm import console, rundir
from fedmm.console import quiet_libraries
from fedmm.errors import FedmmError

USAGE = __doc__.split("\n\n")[1]


def _run(args: argparse.Namespace) -> int:
    from fedmm.api import run_centralized, run_federated
    from fedmm.config import expand_sweeps, load_settings
    from fedmm.sweep import run_sweep

    job = run_federated if args.command == "run" else run_centralized
    if not args.multirun:
        job(load_settings(args.overrides))
        return 0
    combos = [[o for o in c if not o.startswith("output_dir=")] for c in expand_sweeps(args.overrides)]
    base = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("output_dir=")), None)
    root = Path(base or Path("runs") / (datetime.now().strftime("%Y%m%d-%H%M%S") + "-sweep"))
    failed = run_sweep(combos, root, job, load_settings, args.command)
    if failed:
        print(
            f"error: {failed} of {len(combos)} sweep jobs failed (their lines above, and summary.csv); the "
            f"others completed",
            file=sys.stderr,
        )
    return 1 if failed else 0


GROUPS_HELP = """configuration: key=value overrides; groups are chosen with group=option (task, model, strategy,
partition, attack, privacy, launcher, runtime, experiment); `fedmm config` prints every value, `fedmm config
--help` every option with its description (add group choices, e.g. model=blip_vqa, to see theirs)."""


def main(argv: list[str] | None = None) -> int:
    from fedmm import __version__

    parser = argparse.ArgumentParser(
        prog="fedmm",
        description="Federated fine-tuning of multimodal models.",
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"fedmm {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, text: str, parent=sub, prog: str = "fedmm", **kw) -> argparse.ArgumentParser:
        """A subcommand with its own usage line (not the top-level one) and help."""
        return parent.add_parser(
            name,
            prog=f"{prog} {name}",
            help=text,
            description=text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kw,
        )

    for name, text in (
        ("run", "federated training (the default job with no overrides)"),
        ("centralized", "the centralized baseline on the same data and model"),
    ):
        p = verb(name, text, epilog=GROUPS_HELP)
        p.add_argument("-m", "--multirun", action="store_true", help="sweep: one job per combination of a=1,2 ...")
        p.add_argument("-q", "--quiet", action="store_true", dest="quiet_here", help="print errors only")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=3 model=fusion_tiny")
    p = verb("config", "print the composed configuration; with --help, every option and what it does", add_help=False)
    p.add_argument("-h", "--help", action="store_true", help="every option with its value and description")
    p.add_argument("overrides", nargs="*", help="key=value overrides (groups chosen here list their own options)")
    p = verb("info", "parameter counts and update size of the configured model (no weights needed)", epilog=GROUPS_HELP)
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p = verb("prepare", "write a data set as per-site folders (the seed's layout)")
    p.add_argument("dataset", choices=["mmimdb"])
    p.add_argument(
        "source", help="the data as you have it: the original release, a Parquet export, or the seed's layout"
    )
    p.add_argument("out", help="where to write dataset/client_<i>/ and all_in_one_dataset/")
    p.add_argument("--num-clients", type=int, required=True)
    p.add_argument("--partition", choices=["iid", "dirichlet"], default="iid")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (small = skewed)")
    p.add_argument("--min-size", type=int, default=2, help="Dirichlet: at least this many rows per site")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--modalities", default="", help="sites that lack a modality, e.g. '1:text,2:image'")
    p.add_argument("--labels", default="", help="labels.json (default: found next to the data, or MM-IMDb's 23)")
    p.add_argument("--on-bad-sample", choices=["error", "skip"], default="error")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of each site's rows, into its val.csv")
    p.add_argument("--test-fraction", type=float, default=0.0, help="of each site's rows, into its test.csv")
    p = verb("flower", "deploy on Flower: an app folder for `flwr run`, test certificates")
    fl = p.add_subparsers(dest="flower_command", required=True, metavar="COMMAND")
    q = verb("app", "write a Flower App that runs this fedmm configuration", parent=fl, prog="fedmm flower")
    q.add_argument("out", help="an empty folder")
    q.add_argument("overrides", nargs="*", help="key=value overrides, as for fedmm run")
    q = verb(
        "certs", "a test CA, the SuperLink's TLS certificate and SuperNode auth keys", parent=fl, prog="fedmm flower"
    )
    q.add_argument("out", help="an empty folder (keys are written readable by you only)")
    q.add_argument(
        "--host",
        action="append",
        default=[],
        help="the SuperLink's IP or name as SuperNodes reach it (repeat for several)",
    )
    q.add_argument("--supernodes", type=int, default=2, help="how many SuperNode key pairs to write")
    q.add_argument("--days", type=int, default=365, help="validity of the certificates")
    p = verb("export", "a job for another federated platform (nvflare), or a run's trained model (model)")
    p.add_argument("platform", choices=["nvflare", "model"])
    p.add_argument("out", help="nvflare: an empty folder for the job; model: the run directory, then OUT")
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value overrides, as for fedmm run; output_dir= is required "
        "(where the run goes on the server's machine)",
    )
    p.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME[=DATA_ROOT]",
        help="client i is the i-th site (its name in the provisioned project); DATA_ROOT is its data "
        "folder there (default: the config's task.root). Default: site-1..site-K",
    )
    p.add_argument("--checkpoint", default="best", help="model: best (last without select_best), last or N")
    p.add_argument("--format", default="", help="model: fedmm (fusion), peft (LoRA, default) or merged (LoRA)")
    p = verb("cache", "the frozen encoders' features kept across runs: how much, or delete them")
    p.add_argument("action", choices=["info", "clear"])
    p.add_argument("--cache-dir", default="", help="as model.cache_dir (default: $FEDMM_CACHE, else ~/.cache/fedmm)")
    p = verb("evaluate", "score a run's global model (best, last or a round) on its test split, or on other data")
    p.add_argument("run_dir", help="a run directory written by fedmm run")
    p.add_argument("--checkpoint", default="last", help="best (select_best), last (default) or a round number")
    p.add_argument("overrides", nargs="*", help="task.* options for other data of the same task, eval_batch_size, ...")
    p = verb("predict", "the trained model on new image (+ text) rows of a CSV, JSONL or Parquet file")
    p.add_argument("model", help="a run directory, or a folder fedmm export model wrote")
    p.add_argument("--input", required=True, help="rows in task=table's conventions (image path relative to the file)")
    p.add_argument("--output", default="predictions.csv", help="predictions.csv (default) or a .jsonl file")
    p.add_argument("--checkpoint", default="best", help="of a run: best (last without select_best), last, or N")
    p.add_argument("--image-column", default="image")
    p.add_argument("--text-column", default="text")
    p.add_argument("--top-k", type=int, default=3, help="labels with probabilities per row (single-label tasks)")
    p.add_argument("--on-bad-sample", choices=["error", "skip"], default="error")
    p = verb("site", "a site's policy (site.yaml): what it accepts from a server; --settings: would it take this run")
    p.add_argument("policy", nargs="?", default="", help="the site's site.yaml (none: the defaults every site has)")
    p.add_argument("--settings", default="", help="a run's config.yaml: say whether this site would accept it")
    p = verb("report", "(re)write report.md and metrics.png of a run, or summary.csv/.md of a sweep folder")
    p.add_argument("run_dir", help="a run directory, or a sweep folder, written by fedmm")
    argv = list(sys.argv[1:] if argv is None else argv)
    # -q anywhere (`fedmm run rounds=2 -q output_dir=x`): argparse cannot take an option between the overrides
    quiet = any(a in ("-q", "--quiet") for a in argv)
    args, extra = parser.parse_known_args([a for a in argv if a not in ("-q", "--quiet")])
    if extra and getattr(args, "overrides", None) is not None and all("=" in e and e[0] != "-" for e in extra):
        args.overrides += extra  # overrides after an option (`fedmm evaluate RUN --checkpoint 3 task.x=1`)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_libraries()
    if quiet:
        console.QUIET = True
        logging.getLogger().setLevel(logging.ERROR)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command in ("run", "centralized"):
            return _run(args)
        if args.command == "config":
            from fedmm.config.load import describe, show_config

            if args.help:
                print(f"usage: fedmm config [--help] [key=value ...]\n\n{GROUPS_HELP}\n")
            print((describe if args.help else show_config)(args.overrides), end="")
            return 0
        if args.command == "info":
            from fedmm.config import load_settings
            from fedmm.experiment.info import model_summary

            print(model_summary(load_settings(args.overrides)))
            return 0
        if args.command == "prepare":
            from fedmm.data.mmimdb.prepare import prepare_mmimdb

            prepare_mmimdb(
                args.source,
                args.out,
                args.num_clients,
                partition=args.partition,
                alpha=args.alpha,
                seed=args.seed,
                modalities=args.modalities,
                labels_json=args.labels,
                on_bad_sample=args.on_bad_sample,
                val_fraction=args.val_fraction,
                test_fraction=args.test_fraction,
                min_size=args.min_size,
            )
            return 0
        if args.command == "flower":
            from fedmm.runtime.flower import deploy

            if args.flower_command == "app":
                out = deploy.write_app(args.out, args.overrides)
                print(f"wrote {out / 'pyproject.toml'}; run it with: flwr run {out} <superlink-connection> --stream")
            else:
                for path in deploy.write_certificates(args.out, args.host, args.supernodes, args.days):
                    print(path)
            return 0
        if args.command == "export" and args.platform == "model":
            from fedmm.experiment.trained import export_model

            if len(args.overrides) != 1 or "=" in args.overrides[0]:
                raise FedmmError("usage: fedmm export model RUN_DIR OUT [--checkpoint best|last|N] [--format F]")
            out = export_model(args.out, args.overrides[0], args.checkpoint, args.format)
            print(f"wrote {out}; how to load it: its model card, {out / 'README.md'}")
            return 0
        if args.command == "predict":
            from fedmm.experiment.trained import load_model, predict_file

            if args.top_k < 1:
                raise FedmmError(f"--top-k must be at least 1 (got {args.top_k})")
            written, skipped = predict_file(
                load_model(args.model, args.checkpoint),
                args.input,
                args.output,
                image_column=args.image_column,
                text_column=args.text_column,
                on_bad_sample=args.on_bad_sample,
                top_k=args.top_k,
            )
            print(
                f"wrote {written} predictions to {args.output}" + (f" ({skipped} bad rows skipped)" if skipped else "")
            )
            return 0
        if args.command == "export":
            from fedmm.runtime.nvflare.job import export_job

            out = export_job(args.out, args.overrides, args.site)
            print(f"wrote the NVFlare job {out}; submit it with: nvflare job submit -j {out} --startup-kit <admin kit>")
            return 0
        if args.command == "cache":
            from fedmm.backends.feature_cache import cache_root, clear, usage

            root = cache_root(args.cache_dir)
            files, size = clear(root) if args.action == "clear" else usage(root)
            done = "removed" if args.action == "clear" else "holds"
            print(f"{root / 'features'} {done} {files} cached feature file(s), {size / 2**20:.1f} MiB")
            return 0
        if args.command == "evaluate":
            from fedmm.experiment.evaluate import evaluate_run

            out = evaluate_run(args.run_dir, args.overrides, args.checkpoint)
            figures = ", ".join(f"{k}={v:.4f}" for k, v in out.items() if k.startswith("eval_"))
            print(f"{out['checkpoint']} (round {out['round']}) on {out['examples']} test examples: {figures}")
            print(f"wrote {Path(out['run']) / 'evaluation.json'}")
            return 0
        if args.command == "site":
            from fedmm.config.site_policy import describe_policy, load_policy, try_settings

            policy = load_policy(args.policy)
            if not args.settings:
                print(describe_policy(policy), end="")
                return 0
            try:
                text = Path(args.settings).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise FedmmError(f"--settings {args.settings}: cannot be read ({type(e).__name__})") from None
            verdict = try_settings(text, policy)
            print(verdict)
            return 0 if verdict == "accepted" else 3
        if args.command == "report":
            from fedmm.report import write_report

            if not (Path(args.run_dir) / "metrics.jsonl").exists():
                from fedmm.sweep import JOBS, write_summary

                if (Path(args.run_dir) / JOBS).is_file():  # a sweep folder: its summary
                    print(write_summary(Path(args.run_dir)))
                    return 0
                raise FedmmError(
                    f"{args.run_dir} has no metrics.jsonl; give a run directory or a sweep folder written by fedmm"
                )
            print(write_report(args.run_dir))
            return 0
    except FedmmError as e:  # one line, whatever a quoted value held
        print(f"error: {str(e).replace(chr(13), ' ').replace(chr(10), ' ')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        run = rundir.CURRENT[-1] if rundir.CURRENT else "<run_dir>"
        print(
            f"{'terminated' if isinstance(e, Terminated) else 'interrupted'}; completed rounds are kept "
            f"(continue with resume={run})",
            file=sys.stderr,
        )
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # noqa: BLE001 - a bug: one line for the user, the traceback in a file
        if os.environ.get("FEDMM_DEBUG") == "1":
            raise
        where = _save_traceback()
        print(
            f"error: unexpected {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
            f" (a bug, not your input: please report it with {where}; FEDMM_DEBUG=1 prints the traceback)",
            file=sys.stderr,
        )
        return 1
    return 0


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: completed rounds are kept, one line says how to resume."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


ERRORS_KEPT = 20  # tracebacks of errors outside a run kept in ~/.fedmm/errors (the oldest go first)


def _save_traceback() -> str:
    """The current exception's traceback in the run directory's error.txt, or (outside a run) in the user's own
    ~/.fedmm/errors/ (mode 0700: a traceback can hold paths and values; never the shared temporary folder); its
    path."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    if rundir.CURRENT:
        try:
            (Path(rundir.CURRENT[-1]) / "error.txt").write_text(text)
            return str(Path(rundir.CURRENT[-1]) / "error.txt")
        except OSError:
            pass
    folder = Path.home() / ".fedmm" / "errors"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)
        for old in sorted(folder.glob("error-*.txt"), key=lambda p: p.stat().st_mtime_ns)[: -ERRORS_KEPT + 1]:
            old.unlink(missing_ok=True)
        fd, path = tempfile.mkstemp(prefix=f"error-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w") as f:  # mkstemp: mode 0600, a name of its own
            f.write(text)
        return path
    except OSError:
        return "the traceback (it could not be saved)"


if __name__ == "__main__":
    sys.exit(main())
