"""``ktune``: the command line.

    ktune run EXP.yaml [--num-samples N] [--storage PATH] [--address ADDR] [--no-export]
                       [--verbose]
    ktune resume EXPERIMENT_DIR [--address ADDR] [--no-export] [--verbose]
    ktune report EXPERIMENT_DIR [EXPERIMENT_DIR ...] [--out PATH]
    ktune export EXPERIMENT_DIR [--out DIR] [--force] [--trial ID]
    ktune predict EXPORT_DIR TEXT [TEXT ...] [--json]     (TEXT -: one a line from stdin)
    ktune submit EXP.yaml --address http://HEAD:8265 [--follow] [--with-project]
    ktune jobs --address http://HEAD:8265
    ktune models make-tiny-bert DIR [--sizes L-2_H-32 ...]      (TF-Hub format, offline)
    ktune models make-tiny-hf-bert DIR [--sizes L-2_H-32 ...]   (Hugging Face format, offline)

A mistake in the input (experiment file, data files, arguments, directories) prints one
line ``ktune: error: ...`` naming the key or file, and exits with code 2 before any work
starts. Ctrl+C (or SIGTERM) during a search (``run``, ``resume``) stops it the way Ray Tune
does, with its state saved, and prints one line naming ``ktune resume`` (exit code 130,
or 143 for SIGTERM).

EXPERIMENT_DIR and EXPORT_DIR may be URIs (``s3://bucket/prefix/name``): ``resume``
continues there; ``export``, ``predict`` and ``report`` download what they read to a
temporary folder and write their result back to the URI (``export``: default
``<EXPERIMENT_DIR>/export``; ``report``: ``<EXPERIMENT_DIR>/report.html``) unless ``--out``
names a local path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import ktune
from ktune import storage
from ktune.errors import KtuneUserError, SearchFailed, SearchInterrupted
from ktune.ray_start import released_after_trials

__all__ = ["main", "build_parser"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl+C ended


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


_VERBOSE_HELP = (
    "show Ray Tune's own tables and the workers' log lines instead of ktune's progress table"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ktune",
        description="Tune Keras text classifiers with Optuna inside Ray Tune.",
    )
    parser.add_argument("--version", action="version", version=f"ktune {ktune.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the search an experiment file describes")
    run.add_argument("experiment", help="the experiment YAML file")
    run.add_argument("--num-samples", type=_positive_int, help="override search.num_samples")
    run.add_argument("--storage", help="override storage (results go to <storage>/<name>)")
    run.add_argument("--address", help="Ray address to join (auto, ray://host:10001)")
    run.add_argument("--no-export", action="store_true", help="skip the export at the end")
    run.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)

    res = sub.add_parser("resume", help="continue a search whose driver died")
    res.add_argument("experiment_dir", help="the experiment directory, <storage>/<name>")
    res.add_argument("--address", help="Ray address to join (auto, ray://host:10001)")
    res.add_argument("--no-export", action="store_true", help="skip the export at the end")
    res.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)

    rep = sub.add_parser("report", help="write an HTML report of an experiment, or compare several")
    rep.add_argument(
        "experiment_dirs",
        nargs="+",
        metavar="EXPERIMENT_DIR",
        help="experiment directories, <storage>/<name> (finished or running)",
    )
    rep.add_argument(
        "--out",
        help="the HTML file to write (default: EXPERIMENT_DIR/report.html "
        "for one experiment, ./ktune-compare.html for several)",
    )

    exp = sub.add_parser("export", help="export the best trial of an experiment")
    exp.add_argument("experiment_dir", help="the experiment directory, <storage>/<name>")
    exp.add_argument("--out", help="target folder (default: EXPERIMENT_DIR/export)")
    exp.add_argument("--force", action="store_true", help="replace an existing export")
    exp.add_argument(
        "--trial",
        help="a trial of the Pareto front (search.objectives) instead of the most accurate; "
        "default --out: EXPERIMENT_DIR/export-TRIAL (the best trial's: EXPERIMENT_DIR/export)",
    )

    pred = sub.add_parser("predict", help="classify texts with an exported SavedModel")
    pred.add_argument("export_dir", help="a folder written by ktune export")
    pred.add_argument(
        "texts",
        nargs="+",
        metavar="TEXT",
        help="texts to classify; - reads them from stdin, one a line (blank lines skipped)",
    )
    pred.add_argument("--json", action="store_true", help="print JSON lines with all scores")

    sb = sub.add_parser("submit", help="submit a search to a Ray cluster as a Ray Job")
    sb.add_argument("experiment", help="the experiment YAML file")
    sb.add_argument("--address", required=True, help="the head's dashboard, http://HEAD:8265")
    sb.add_argument(
        "--follow",
        action="store_true",
        help="stream the job's logs until it ends; exit 1 if it did not succeed",
    )
    sb.add_argument(
        "--with-project",
        action="store_true",
        help="also ship this ktune checkout (py_modules) to the cluster",
    )
    sb.add_argument("--num-samples", type=_positive_int, help="override search.num_samples")
    sb.add_argument("--storage", help="override storage: an absolute path all nodes share")
    sb.add_argument(
        "--verbose", action="store_true", help="the job prints Ray's own tables and worker logs too"
    )

    jb = sub.add_parser("jobs", help="list the Ray Jobs of a cluster")
    jb.add_argument("--address", required=True, help="the head's dashboard, http://HEAD:8265")

    models = sub.add_parser("models", help="write tiny local models for offline use")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="WHAT")
    for name, what in (
        ("make-tiny-bert", "a TF-Hub preprocess model and small BERT encoders (tfhub_bert)"),
        ("make-tiny-hf-bert", "Hugging Face BERT checkpoints with tokenizer files (hf_bert)"),
    ):
        m = msub.add_parser(name, help=f"write {what}")
        m.add_argument("out_dir", help="folder to write (must not exist)")
        m.add_argument(
            "--sizes",
            nargs="+",
            default=["L-2_H-32", "L-2_H-64"],
            metavar="L-<L>_H-<H>",
            help="sizes to write (default: L-2_H-32 L-2_H-64)",
        )
        m.add_argument(
            "--head-size",
            type=_positive_int,
            default=16,
            help="hidden units per attention head, A = H / head_size (default 16)",
        )
    for command in sub.choices.values():
        command.set_defaults(command_parser=command)  # for main's errors, with its usage
    return parser


def _parse_sizes(sizes: Sequence[str], head_size: int) -> list[tuple[int, int, int]]:
    import re

    out = []
    for text in sizes:
        m = re.fullmatch(r"L-(\d+)_H-(\d+)", text)
        if not m:
            raise ktune.ConfigError(f"--sizes: expected L-<layers>_H-<hidden>, got {text!r}")
        layers, hidden = int(m.group(1)), int(m.group(2))
        if layers < 1 or hidden < 1 or hidden % head_size:
            raise ktune.ConfigError(
                f"--sizes: {text}: hidden size must be a positive multiple of "
                f"--head-size {head_size}"
            )
        out.append((layers, hidden, hidden // head_size))
    return out


def _cmd_submit(args: argparse.Namespace) -> int:
    from ktune.jobs import follow, submit

    job_id, url = submit(
        args.experiment,
        args.address,
        with_project=args.with_project,
        num_samples=args.num_samples,
        storage=args.storage,
        verbose=args.verbose,
    )
    print(f"submitted job {job_id}\ndashboard: {url}")
    if not args.follow:
        print(f"follow it: ray job logs -f {job_id} --address {args.address}")
        return 0
    try:
        status = follow(args.address, job_id)
    except KeyboardInterrupt:  # Ctrl+C stops the following, not the job
        print(
            f"ktune: stopped following; job {job_id} keeps running on the cluster "
            f"(stop it: ray job stop {job_id} --address {args.address})",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(f"job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from ktune.jobs import format_jobs, list_jobs

    print(format_jobs(list_jobs(args.address)))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if out.exists():
        raise ktune.ExperimentError(f"{out}: already exists; choose a new folder")
    sizes = _parse_sizes(args.sizes, args.head_size)
    make: Callable[[Path, list[tuple[int, int, int]]], Iterable[str]]
    if args.models_command == "make-tiny-bert":
        from ktune.testing.tfhub_bert import make_tiny_bert

        make = make_tiny_bert
    else:
        from ktune.testing.hf_bert import make_tiny_hf_bert

        make = make_tiny_hf_bert
    for line in make(out, sizes):
        print(line)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ktune import api

    overrides = {"num_samples": args.num_samples, "storage": args.storage, "address": args.address}
    with released_after_trials():
        result = api.run(
            args.experiment,
            export=False if args.no_export else None,
            verbose=args.verbose,
            progress=True,
            **{k: v for k, v in overrides.items() if v is not None},
        )
        print(result.summary())
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from ktune import api

    with released_after_trials():
        result = api.resume(
            args.experiment_dir,
            address=args.address,
            export=False if args.no_export else None,
            verbose=args.verbose,
            progress=True,
        )
        print(result.summary())
    return 0


@contextlib.contextmanager
def _temporary():
    """A local folder for downloads, removed afterwards."""
    tmp = storage.temporary_dir("ktune-download-")
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd_report(args: argparse.Namespace) -> int:
    from ktune.experiment_dir import fetch_experiment
    from ktune.report import REPORT_FILE, compare_experiments, load_experiment, write_report
    from ktune.report.html import check_out

    if args.out and not storage.is_uri(args.out):
        check_out(args.out)  # before any directory is read or downloaded
    with _temporary() as tmp:
        # Every directory is checked (and a URI downloaded) before anything is written.
        local_dirs = [
            fetch_experiment(d, tmp / str(i) / storage.basename(d), trials=True)
            if storage.is_uri(d)
            else d
            for i, d in enumerate(args.experiment_dirs)
        ]
        records = [  # a URI's downloaded copy is named by its URI (header, HTML)
            replace(load_experiment(d), shown=storage.redact(g) if storage.is_uri(g) else None)
            for d, g in zip(local_dirs, args.experiment_dirs)
        ]
        if len(records) > 1:
            print(compare_experiments(records, _local_out(args.out, "ktune-compare.html")).text)
            return 0
        given = args.experiment_dirs[0]
        if args.out or not storage.is_uri(given):
            out = Path(args.out) if args.out else records[0].path / REPORT_FILE
            print(write_report(records[0], out).text)
            return 0
        # A report of an experiment on a URI goes beside it, like a local one; the
        # summary names the URI, not the temporary download.
        written = write_report(records[0], records[0].path / REPORT_FILE)
        for path in [written.path, *sorted(written.images, key=lambda p: p.name)]:
            storage.upload_file(path, storage.join(given, path.name), "EXPERIMENT_DIR")
        shown = storage.redact(given)
        print(written.text.replace(str(written.path), storage.join(shown, REPORT_FILE)))
    return 0


def _local_out(out: str | None, default: str) -> Path:
    if out and storage.is_uri(out):
        raise ktune.ExperimentError(
            f"--out: a report of several experiments is written "
            f"locally; got the URI {storage.redact(out)}"
        )
    return Path(out or default)


def _cmd_export(args: argparse.Namespace) -> int:
    from ktune import api

    with _temporary() as tmp:
        # A URI's files are downloaded to tmp; an unusable directory or an existing
        # target is one line before TensorFlow loads.
        result = api.load(args.experiment_dir, workdir=tmp)
        done = result.export(args.out, force=args.force, trial=args.trial)
    print(f"exported: {storage.redact(done)}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from ktune import api

    texts = args.texts
    if texts == ["-"]:
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
        if not texts:
            raise ktune.ConfigError("TEXT: - read no text from stdin")
    for row in api.predict(args.export_dir, texts):
        if args.json:
            print(json.dumps(row, ensure_ascii=False))
        else:
            print(f"{row['label']}\t{row['score']:.4f}\t{row['text']}")
    return 0


_COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "report": _cmd_report,
    "export": _cmd_export,
    "predict": _cmd_predict,
    "models": _cmd_models,
    "submit": _cmd_submit,
    "jobs": _cmd_jobs,
}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is logged, not the stream it was
    at the first ``main()``: in a notebook or a test that swaps ``sys.stderr``, a later
    run's log lines (some from threads) do not go to a closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; an argument no option takes is one error from that command's own
    parser, with its usage (argparse's top-level error shows only ``ktune COMMAND``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        hint = ""
        if args.command == "export" and len(extra) == 1 and not extra[0].startswith("-"):
            where = f"ktune export {args.experiment_dir} --out {extra[0]}"
            hint = f" (the target folder is --out: {where})"
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("ktune: %(message)s"))
    logger = logging.getLogger("ktune")
    if not logger.handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        return _COMMANDS[args.command](args)
    except KtuneUserError as e:
        print(f"ktune: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SearchFailed as e:
        print(f"ktune: error: {e}", file=sys.stderr)
        return 1
    except SearchInterrupted as e:  # Ctrl+C or SIGTERM during the search: state saved
        print(f"ktune: {e}", file=sys.stderr)
        if e.signal == signal.SIGTERM:
            _TERMINATED.append(e.signal)  # entry() exits at once (see there)
        return 128 + e.signal  # as a shell reports a process the signal ended
    except KeyboardInterrupt:  # elsewhere (a second Ctrl+C skips Ray's last snapshot)
        print("ktune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


_TERMINATED: list[int] = []  # main() ended on a SIGTERM


def entry() -> None:
    """The ``ktune`` command: :func:`main`, then an exit that skips the interpreter's own
    teardown of TensorFlow and Ray (about 2 s of every command that loaded them).

    Python runs the atexit handlers last-registered first; this one is registered before
    the command imports Ray or TensorFlow, so it runs after all of theirs (Ray's shutdown, logging's
    flush, W&B's and MLflow's, temporary folders' clean-up) and ends the process with the
    command's exit code. An exception that escapes ``main`` leaves the normal exit alone.
    """
    import atexit

    code: list[int] = []

    def quick_exit() -> None:
        if code:
            logging.shutdown()  # its own handler was registered before this one
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code[0])

    atexit.register(quick_exit)
    code.append(main())
    if _TERMINATED:
        # SIGTERM (a scheduler stopping the job): what must be kept is written, and Ray's
        # own shutdown is skipped. A SIGTERM sent to the whole process group (SLURM's
        # scancel) has stopped Ray's processes too, and that shutdown would wait 60 s for
        # them, then end the process with code 1; a Ray this process started goes with
        # it (Ray's reaper), as it did when SIGTERM's default action ended the process.
        quick_exit()
    sys.exit(code[0])


if __name__ == "__main__":
    entry()
