"""`flowdc download|partition|size|distribute|report|demo|ui`: parse, build a config, call; nothing else.

Options are generated from the config dataclasses, so every config key is also a CLI option with
the same name, and an option given on the command line overrides the JSON config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from flowdc.config import DistributeConfig, DownloadConfig, PartitionConfig, SizeConfig, build_config
from flowdc.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, FlowdcError, UserError

EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a tool whose reader closed the pipe

DOWNLOAD_EPILOG = """examples:
  flowdc download --input dataset.parquet --output images --url photo_url --label species
  flowdc download --config my_config.json --concurrent_downloads 200 --output_format webdataset
  rerun the same command to resume; --force starts over."""


DISTRIBUTE_EPILOG = """examples:
  flowdc distribute --input parts/ --output out/ --url_col url --label_col label --workers 2
  flowdc distribute --engine workqueue --input parts/ --output out/ --port_number 9123
      then on each worker machine: work_queue_worker MANAGER_HOST 9123
  flowdc distribute --config taskvine_config.json --dry_run
  rerun the same command to resume; each partition resumes from its own ledger."""
EPILOGS = {"download": DOWNLOAD_EPILOG, "distribute": DISTRIBUTE_EPILOG}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like every other user error (no usage dump)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Switch(argparse.Action):
    """A boolean option and its --no_ spellings as one argument, so usage and help show them all
    together; a spelling that starts with --no_ (or is --disable_paarc) turns it off."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith(("--no_", "--disable_")))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


def add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    parser.add_argument("--config", help="JSON file with any of the options below (CLI options win).")
    for f in dataclasses.fields(cls):
        meta = f.metadata
        names = [f"--{f.name}", *(f"--{a}" for a in meta.get("aliases", ()))]
        kind = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if kind.startswith("bool"):
            negatives = [f"--no_{f.name}"] + (["--disable_paarc"] if f.name == "enable_paarc" else [])
            help_text = f"{meta.get('help', '')} (default: {'on' if default else 'off'})".replace("%", "%%")
            parser.add_argument(*names, *negatives, dest=f.name, action=Switch, default=None, help=help_text)
            continue
        help_text = f"{meta.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if kind.startswith("dict"):
            kwargs["type"] = _json_object
            kwargs["metavar"] = "JSON"
        elif kind.startswith("int"):
            kwargs["type"] = int
        elif kind.startswith("float"):
            kwargs["type"] = float
        parser.add_argument(*names, **kwargs)


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    overrides = {f.name: getattr(args, f.name, None) for f in dataclasses.fields(cls)}
    return build_config(cls, args.config, overrides)


# -- commands -------------------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace) -> int:
    from flowdc import child_process
    from flowdc.lean import collections_paused

    cfg = config_from_args(DownloadConfig, args)
    if child_process.worth_starting_early(cfg):
        child_process.start_early()  # it loads while this process imports the download's modules
    try:
        with collections_paused():
            from flowdc.download import run_download
            from flowdc.overview import summary_text

        overview = run_download(cfg)
    finally:
        child_process.discard_early()
    print(summary_text(overview, overview.get("output", cfg.output)))
    if overview.get("interrupted"):
        return EXIT_INTERRUPTED
    return EXIT_FAILURE if (overview.get("uploads") or {}).get("failed") else 0  # kept locally: a rerun ships them


def cmd_partition(args: argparse.Namespace) -> int:
    from flowdc.partition import run_partition

    cfg = config_from_args(PartitionConfig, args)
    plan = run_partition(cfg, progress=not cfg.quiet)
    parts = plan.get("partitions", [])
    print(f"flowdc: {plan.get('total_rows', 0)} rows -> {len(parts)} partitions in {cfg.output_folder} "
          f"(plan: {cfg.output_folder}/plan.json)")
    return 0


def cmd_size(args: argparse.Namespace) -> int:
    from flowdc.size import run_size

    cfg = config_from_args(SizeConfig, args)
    report = run_size(cfg)
    print(report["summary_text"])
    return 0


def cmd_distribute(args: argparse.Namespace) -> int:
    from flowdc.distribute import run_distribute, summary_text

    cfg = config_from_args(DistributeConfig, args)
    summary = run_distribute(cfg)
    if summary.get("dry_run"):
        return 0
    print(summary_text(summary))
    return 1 if summary["partitions_failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from flowdc.report import render_report

    out = render_report(args.telemetry, args.out, args.storage_options)
    print(f"flowdc: report written to {out}")
    return 0


def cmd_consolidate(args: argparse.Namespace) -> int:
    from flowdc.consolidate import DATASET_FILE, INDEX_FILE, consolidate

    overview = consolidate(args.output, args.storage_options, progress=True)
    t = overview["totals"]
    where = args.output.rstrip("/")  # `dataset/` as typed, without a doubled slash ("/" gives "")
    # Of the plan when there is one: the rows of partitions never started have no record to count.
    rows, what = (t["planned"], "planned rows") if t.get("planned") else (t["rows"], "rows")
    print(f"flowdc: {t['ok']}/{rows} {what} stored ({t['ok'] / rows if rows else 0.0:.1%}) in "
          f"{len(overview['partitions'])} outputs, {t['removed']} removed from the manifest")
    if t["not_recorded"]:
        print(f"  {t['not_recorded']} planned rows have no record yet{unfinished_words(overview['unfinished'])}: "
              "run the same flowdc distribute (or flow) again to fetch them")
    print(f"  index:   {where}/{INDEX_FILE}\n  dataset: {where}/{DATASET_FILE}")
    return 0


def unfinished_words(unfinished: list[dict[str, Any]], shown: int = 3) -> str:
    """' (part-00001, part-00002 not started; part-00000 partial)', or '' for none."""
    groups = {"not started": [u["folder"] for u in unfinished if not u["recorded"]],
              "partial": [u["folder"] for u in unfinished if u["recorded"]]}
    words = [f"{', '.join(names[:shown])}{f' and {len(names) - shown} more' if len(names) > shown else ''} {state}"
             for state, names in groups.items() if names]
    return f" ({'; '.join(words)})" if words else ""


def cmd_demo(args: argparse.Namespace) -> int:
    from flowdc.demo import DEMO_PORT, run_demo

    if args.hosts_port is None:
        args.hosts_port = DEMO_PORT
    if args.ui:
        ui_module = _import_ui("flowdc.ui.demo_ui")
        return ui_module.run_demo_ui(args.out, rows=args.rows, output_format=args.output_format, host=args.host,
                                     port=args.port, hosts_port=args.hosts_port, token=_ui_token(args))
    return run_demo(args.out, rows=args.rows, quiet=args.quiet, output_format=args.output_format,
                    hosts_port=args.hosts_port)


def cmd_ui(args: argparse.Namespace) -> int:
    from pathlib import Path

    server = _import_ui("flowdc.ui.server")
    context = _import_ui("flowdc.ui.context")
    ctx = context.UiContext(workdir=Path(args.workdir).resolve(), prefect_api=args.prefect_api)
    if os.environ.get("FLOWDC_TELEMETRY_TOKEN"):  # runs elsewhere (workers, flows) push with this token
        ctx.push_token = os.environ["FLOWDC_TELEMETRY_TOKEN"]
    server.serve(ctx, args.host, args.port, _ui_token(args))
    return 0


def _import_ui(module: str) -> Any:
    """NiceGUI is an optional extra: without it, one line saying how to get it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("nicegui", "fastapi"):
            raise UserError("the UI needs NiceGUI: pip install 'flowdc[ui]'") from None
        raise


def _ui_token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get("FLOWDC_UI_TOKEN") or None


def add_ui_server_options(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve the page on (default: 127.0.0.1; "
                        "any other address needs --token).")
    parser.add_argument("--port", type=int, default=port, help=f"Port of the page (default: {port}).")
    parser.add_argument("--token", default=None, help="Secret a browser must present once (?token=...); required "
                        "off loopback. Also read from FLOWDC_UI_TOKEN.")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="flowdc", description="Download ML image datasets from URL manifests, "
                           "fast and politely (per-host adaptive concurrency).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, type | None, Callable[[argparse.Namespace], int]]] = [
        ("download", "Download every URL of a manifest into an imagefolder or webdataset shards.", DownloadConfig,
         cmd_download),
        ("partition", "Split a manifest into partitions (host / simple / greedy) with a plan.json.", PartitionConfig,
         cmd_partition),
        ("size", "Estimate a manifest's total download size from HEAD / Range requests.", SizeConfig, cmd_size),
        ("distribute", "Download every partition (from `flowdc partition`) as a task on local processes, Work "
         "Queue or TaskVine workers.", DistributeConfig, cmd_distribute),
    ]
    for name, help_text, cls, func in commands:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=EPILOGS.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if cls is not None:
            add_config_options(p, cls)
        p.set_defaults(func=func)
    report = sub.add_parser("report", help="Plot a telemetry JSONL file (limit, in-flight, latency per host).")
    report.add_argument("telemetry", help="Telemetry written with --telemetry: a file, or a folder of parts, local "
                        "or an fsspec URL (s3://...).")
    report.add_argument("--out", default=None, help="Output .png or .html (default: beside a local telemetry file, "
                        "else in the working folder).")
    report.add_argument("--storage_options", type=_json_object, default=None, metavar="JSON",
                        help="fsspec storage options for a telemetry URL (endpoint, profile, ...).")
    report.set_defaults(func=cmd_report)
    cons = sub.add_parser("consolidate", help="Merge the ledgers of a dataset's partitions and runs into one index.")
    cons.add_argument("output", help="The dataset folder or fsspec URL (holding part-NNNNN/ or run-ID/part-NNNNN/).")
    cons.add_argument("--storage_options", type=_json_object, default=None, metavar="JSON",
                      help="fsspec storage options for a remote output.")
    cons.set_defaults(func=cmd_consolidate)
    demo = sub.add_parser("demo", help="Start sample image hosts on loopback and download a sample manifest.")
    demo.add_argument("--out", default="flowdc-demo", help="Folder for the demo manifest and output.")
    demo.add_argument("--rows", type=int, default=2000, help="Rows in the demo manifest.")
    demo.add_argument("--output_format", default="webdataset", choices=("imagefolder", "webdataset"))
    demo.add_argument("--quiet", action="store_true", help="No progress bar.")
    demo.add_argument("--hosts_port", type=int, default=None,
                      help="Port of the sample hosts (default: the demo's fixed port, so a rerun resumes; 0 picks "
                      "a free one, for two demos at once).")
    demo.add_argument("--ui", action="store_true", help="Watch the download live in the browser (flowdc ui's page); "
                      "the page stays up until Ctrl-C.")
    add_ui_server_options(demo, 8080)
    demo.set_defaults(func=cmd_demo)
    ui_cmd = sub.add_parser("ui", help="Serve the web page that configures, starts and watches runs live.")
    add_ui_server_options(ui_cmd, 8080)
    ui_cmd.add_argument("--prefect_api", default=os.environ.get("PREFECT_API_URL"),
                        help="Prefect server API (e.g. http://127.0.0.1:4200/api) for running deployments "
                        "(default: $PREFECT_API_URL).")
    ui_cmd.add_argument("--workdir", default=".flowdc-ui", help="Folder for the task configs and telemetry of "
                        "the runs started from the page (default: .flowdc-ui).")
    ui_cmd.set_defaults(func=cmd_ui)
    return parser


# Commands whose process imports no pandas (flowdc.lean): the ones that start a download or probe
# hosts, where start-up is paid per partition. `ui` and `demo` may host code that wants it.
LEAN_COMMANDS = frozenset({"download", "size", "partition", "distribute", "consolidate"})


def console_main() -> int:
    """The `flowdc` console script and `python -m flowdc`: a process that runs one command and exits."""
    if sys.argv[1:2] and sys.argv[1] in LEAN_COMMANDS:
        from flowdc.lean import hold_back_pandas

        hold_back_pandas()
    code = main()
    # The command is done: what it wrote is committed and closed, and what is left in memory goes
    # with the process. The interpreter's last collection would walk all of it first (50-110 ms
    # after a download, a run's whole tail); frozen, it is skipped. Frozen objects are still freed
    # by reference counting at exit; only garbage in cycles keeps its finalizers unrun, which
    # CPython never promises at exit anyway.
    gc.freeze()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with _sigterm_as_ctrl_c():
            code = _run(argv)
        sys.stdout.flush()  # a pipe is block-buffered: flush while a closed one can still be handled
        return code
    except BrokenPipeError:
        # The reader went away (`flowdc ... | head`); what was stored stays stored. Point the
        # standard streams at /dev/null so the interpreter's own flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                os.dup2(devnull, stream.fileno())
        return EXIT_BROKEN_PIPE


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops a command as Ctrl-C does, also before the command installs its own handlers (a
    download's event loop does): in its first second (imports, the manifest, the output's claim)
    it killed the process, without the summary or exit code 130 a stopped run gives."""
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:  # not the main thread: the signal is not ours to take
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except FlowdcError as exc:
        print(f"flowdc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flowdc: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(console_main())
