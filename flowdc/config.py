"""One dataclass per command, filled from a JSON file and then from CLI options.

Field names are the seed's config keys, so old JSON configs keep working. Each field carries its
help text and CLI aliases, and cli.py builds its argparse options from these fields, so an option
is declared once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from flowdc.errors import ConfigError
from flowdc.localfiles import local_file_problem, local_folder_problem
from flowdc.paarc import PaarcParams
from flowdc.urls import DEFAULT_SECRET_PARAMS, redact_url, redact_urls_in, secret_param_names
from flowdc.writers.shardnames import check_prefix

_PAARC = PaarcParams()  # the controller's defaults are the options' defaults
# download, partition and size read manifests through one reader (flowdc.manifest): one option.
INPUT_FORMATS = ("auto", "parquet", "csv", "excel", "xml")
INPUT_FORMAT_HELP = ("Manifest format; auto picks by extension, looking past .gz/.bz2/.zst (photos.csv.gz is csv). "
                     "csv is any delimited text: tab-separated for .tsv, else whichever of comma, tab, semicolon "
                     "and pipe splits the header line into the most fields (comma on a tie).")


def opt(default: Any, help: str, *, aliases: tuple[str, ...] = (), choices: tuple[str, ...] = ()) -> Any:
    meta = {"help": help, "aliases": aliases, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PaarcOptions:
    """Shared PAARC knobs; mixed into every command that sends requests."""

    enable_paarc: bool = opt(True, "Adapt each host's concurrency with PAARC (use --disable_paarc for a fixed C_init).")
    C_init: int = opt(_PAARC.C_init, "Initial (and, without PAARC, fixed) concurrency per host.")
    C_min: int = opt(_PAARC.C_min, "Lowest concurrency PAARC may set for a host.")
    C_max: int = opt(_PAARC.C_max, "Highest concurrency PAARC may set for a host.")
    mu: float = opt(_PAARC.mu, "Utilisation factor: the operating point is mu x the discovered ceiling (0-1].")
    beta: float = opt(_PAARC.beta, "Multiplicative backoff on overload (429/503), in (0,1).")
    theta_50: float = opt(
        _PAARC.theta_50,
        "Latency inflation threshold: p50 TTFB above theta_50 x its unloaded value means the host is full.",
    )
    theta_95: float = opt(
        _PAARC.theta_95,
        "Latency inflation threshold: p95 TTFB above theta_95 x its unloaded value means the host is full.",
    )
    probe_rtt_period: float = opt(
        _PAARC.probe_rtt_period, "Seconds between PROBE_RTT phases that re-measure a host's base latency."
    )
    alpha_ema: float = opt(
        _PAARC.alpha_ema, "Smoothing factor of the per-interval latencies (baselines, telemetry), in (0,1]."
    )

    def check_paarc(self) -> None:
        try:  # the controller owns the rules for its knobs
            PaarcParams.from_options(self)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass
class RedactOptions:
    """Which URL parts are masked wherever a URL is written or logged (docs/safety.md)."""

    redact_urls: bool = opt(True, "Mask userinfo and secret query parameters of every URL written or logged "
                            "(ledger, samples' .json, overview, reports); requests still use the real URL. "
                            "--no_redact_urls keeps URLs whole.")
    redact_params: list[str] = opt(list(DEFAULT_SECRET_PARAMS), "Query parameter names whose values are masked "
                                   "(whole names, any case).")



@dataclass
class NetworkOptions:
    """How requests reach the network; mixed into every command that sends requests (docs/network.md)."""

    proxy: str | None = opt(
        None, "HTTP proxy for every request, http://[user:password@]host:port; overrides HTTP_PROXY and "
        "HTTPS_PROXY (NO_PROXY still applies); 'none' ignores the environment's proxies.")
    ca_bundle: str | None = opt(
        None, "PEM file of extra CA certificates to trust (a site that inspects TLS), beside the system's "
        "(SSL_CERT_FILE is honoured as well).")
    insecure: bool = opt(False, "Do not check TLS certificates at all (warned about, and written into the overview).")
    block_link_local: bool = opt(
        True, "Refuse link-local and cloud-metadata addresses (169.254.0.0/16, fe80::/10, metadata.google.internal, "
        "...) as a per-row failure blocked_address; --no_block_link_local allows them.")
    dns_threads: int = opt(64, "Threads that resolve host names (the system resolver, answers cached for 300 s).")
    host_down_after: float = opt(
        60.0, "Seconds a host may leave every request unanswered (timed out, refused or reset; at least 8 in a "
        "row) before it is taken as down: its rows wait while other hosts have work, one request every 15 s "
        "asks whether it is back, and the rows still waiting at the end fail as host_down without a request "
        "(a later run retries them). Refusals and resets alone take a host as down after 5 s at most, and "
        "after 8 unanswered in a row a host gets one request at a time, further apart each time. 0 = never.")

    def check_network(self) -> None:
        from flowdc.proxies import ProxyRoutes  # parses --proxy (and the environment's proxies) the one way

        if self.dns_threads < 1:
            raise ConfigError(f"dns_threads must be >= 1, got {self.dns_threads}")
        if self.host_down_after < 0:
            raise ConfigError(f"host_down_after must be >= 0 seconds, got {self.host_down_after}")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ConfigError(f"--ca_bundle {self.ca_bundle}: no such file")
        if self.ca_bundle and self.insecure:
            raise ConfigError("give --ca_bundle or --insecure, not both")
        if self.ca_bundle:
            from flowdc.network import ssl_context

            ssl_context(self.ca_bundle, insecure=False)  # a file of no certificates: refused now, not mid-run
        ProxyRoutes.from_settings(self.proxy, os.environ)


@dataclass
class PolitenessOptions:
    """Who we say we are and which opt-outs we honour (flowdc/politeness.py, docs/politeness.md)."""

    user_agent_token: str | None = opt(None, "Added to the User-Agent (FLOW-DC/VERSION (+contact_url) TOKEN), so "
                                       "sites can tell your crawl apart and X-Robots-Tag may address it by name.")
    contact_url: str | None = opt(None, "A URL (or mailto:) in the User-Agent where site owners can reach you.")
    disallowed_header_directives: list[str] = opt(
        ["noai", "noimageai", "noindex", "noimageindex"],
        "X-Robots-Tag directives that opt a response out: the row is skipped with reason x_robots_tag:DIRECTIVE. "
        "An empty list honours none.")

    def check_politeness(self) -> None:
        for name in ("user_agent_token", "contact_url"):
            value = getattr(self, name) or ""
            if any(ord(c) < 32 or ord(c) == 127 for c in value):  # every request would refuse such a header
                raise ConfigError(f"{name} may not hold control characters (a line break, a tab): {value!r}")


# Values past these are typos or wishes the machine cannot grant; each is memory (or processes)
# taken up front, and a huge concurrent_downloads ran the machine out of memory.
DOWNLOAD_BOUNDS = {
    "concurrent_downloads": (20_000, "each slot holds a connection, a task and rows read ahead; split the "
                             "manifest over more machines (flowdc partition, distribute) for more"),
    "batch_rows": (1_000_000, "a batch is held in memory whole"),
    "processes_count": (256, "one process each"),
    "image_size": (16_384, "a resized image is held in memory whole"),
}


@dataclass
class DownloadConfig(PolitenessOptions, NetworkOptions, RedactOptions, PaarcOptions):
    input: str = opt("", "Manifest of URLs: parquet, csv/tsv/txt or xml (text also .gz, .bz2 or .zst "
                     "compressed), or excel (.xlsx/.xls); a path or any fsspec URL (s3://, gs://, https://, hf://).")
    output: str = opt("", "Output directory or fsspec URL (s3://bucket/prefix, gs://bucket/prefix).")
    input_format: str = opt("auto", INPUT_FORMAT_HELP, choices=INPUT_FORMATS)
    url: str = opt("url", "Column holding the URLs.", aliases=("url_col",))
    label: str | None = opt(None, "Column holding class labels (optional; \"\" for none, over a config file's).",
                            aliases=("label_col",))
    output_format: str = opt("imagefolder", "Output layout.", choices=("imagefolder", "webdataset"))
    naming_mode: str = opt(
        "sequential",
        "sequential: keys from manifest row numbers; url_based: keys hashed from the URL.",
        choices=("sequential", "url_based"),
    )
    concurrent_downloads: int = opt(1000, "Global bound on requests in flight, over all hosts.")
    timeout: float = opt(30.0, "Seconds allowed for one request (connect, headers and body).")
    max_retry_attempts: int = opt(3, "Retries per URL after transient failures (429, 408, 5xx, timeouts, resets).")
    retry_backoff_sec: float = opt(2.0, "Base delay before a retry; doubles each attempt, with jitter.")
    samples_per_shard: int = opt(10000, "Samples per webdataset tar shard.")
    shard_max_seconds: float = opt(
        60.0, "A staged webdataset shard (object stores, cloud_tool) is committed when full or after this many "
        "seconds open, which bounds what a kill loses there; local shards are appended to in place.")
    shard_prefix: str = opt("", "webdataset: put this before each shard's number in its file names "
                            "(PREFIX000000.tar, its .parquet and _stats.json); distribute gives each partition its "
                            "own (part-00003-) so that names are unique across the dataset.")
    image_key: str = opt("auto", "webdataset: the one extension of every image member, whatever each image's "
                         "format (bytes kept as served; loaders decode by content), so every loader sees every "
                         "row. auto: the first stored image's; give one for partitions of one dataset.",
                         choices=("auto", "jpg", "png", "webp", "jpeg"))
    max_body_bytes: int = opt(50 * 1024 * 1024, "Largest body accepted per URL, in bytes.")
    content_types: list[str] = opt(
        ["image/"], "Accepted Content-Type prefixes; an empty list accepts any type. With image/ in it, a generic "
        "type (binary/octet-stream, as S3 serves files uploaded without one) counts when the body starts as an "
        "image does.", aliases=("content_type",)
    )
    max_redirects: int = opt(5, "Redirects followed per URL.")
    create_tar: bool = opt(True, "Also pack the output into an archive beside it, OUTPUT.tar (imagefolder only; "
                           "shards are tars).")
    archive_format: str = opt("tar", "Format of create_tar's archive: tar (the images are compressed already) "
                              "or tar.gz.", choices=("tar", "tar.gz"))
    create_overview: bool = opt(True, "Write overview.json with totals, rates, errors and per-host figures.")
    telemetry: str | None = opt(
        None, "Write per-host and run snapshots (JSON lines) to this file or fsspec URL (S3/GCS: a folder of parts).")
    telemetry_push: str | None = opt(
        None, "POST snapshots to this collector URL (+/telemetry), token from env FLOWDC_TELEMETRY_TOKEN; "
        "a dead collector never stops the download.")
    storage_options: dict[str, Any] = opt({}, "fsspec storage options for a remote output (endpoint, profile, ...).")
    input_storage_options: dict[str, Any] = opt({}, "fsspec storage options for a remote input manifest.")
    key_col: str | None = opt(None, "Column holding a stable row id: a row's identity across runs (a refresh with "
                              "a changed manifest); without it, the URL with secret parameters masked.")
    cloud_tool: str | None = opt(
        None, "Upload finished shards (webdataset) or the archive (imagefolder) with this tool, then delete the "
        "local copy.", choices=("gocmd", "aws", "gsutil", "rclone", "scp", "custom"))
    cloud_destination: str | None = opt(None, "Where cloud_tool uploads to (iRODS path, s3://..., remote:path, ...).")
    cloud_command: list[str] = opt(
        [], "For cloud_tool custom: the command as a list with {file} and {destination}, e.g. "
        "[\"mc\",\"cp\",\"{file}\",\"{destination}/\"].")
    cloud_args: list[str] = opt(
        [], "Extra arguments for cloud_tool, after its own and before the file: a JSON list or comma-separated, "
        "given with '=', e.g. --cloud_args='[\"--endpoint-url\",\"http://127.0.0.1:9000\"]' for aws.")
    cloud_env: dict[str, Any] = opt(
        {}, "Environment variables for cloud_tool's process, on top of this one's (JSON; null unsets one), e.g. "
        "{\"AWS_PROFILE\": \"lab\"}. Values are kept out of recorded configs and messages.")
    cloud_retries: int = opt(3, "Attempts after the first for each upload that fails.")
    cloud_timeout_s: float = opt(3600.0, "An upload still running after this many seconds is killed and counts "
                                 "as a failed attempt.")
    force: bool = opt(False, "Start over: delete what flowdc wrote in this output (never other files).")
    run_id: str | None = opt(None, "Name of this run in the output's lock or lease; a rerun with the same run_id "
                             "(a resubmitted task) takes over that lease at once. Default: a new id per run.")
    lease_ttl_s: float = opt(60.0, "Object-store outputs: a lease whose heartbeat is older than this is taken "
                             "over (the run died; at once when its process is gone from this machine); the "
                             "heartbeat runs every third of it.")
    verify: str = opt("header", "Check that each body decodes (Pillow, before it is stored): header reads the "
                      "size and format only, full decodes every pixel, none skips it. A body that fails is "
                      "failed with reason not_decodable.", choices=("header", "full", "none"))
    image_size: int = opt(256, "Side in pixels for --resize_mode (img2dataset's image_size).")
    resize_mode: str = opt("no", "Resize in worker processes: no, keep_ratio (smaller side = image_size), "
                           "keep_ratio_largest (larger side), center_crop (then the centre square), border "
                           "(larger side, then padded square). Off by default: bytes kept as served.",
                           choices=("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border"))
    resize_only_if_bigger: bool = opt(False, "Never enlarge: images smaller than image_size keep their size.")
    encode_format: str = opt("keep", "Re-encode stored images as jpg, png or webp; keep: the source's format "
                             "(re-encoded only when resized).", choices=("keep", "jpg", "png", "webp"))
    encode_quality: int = opt(95, "Quality for jpg and webp (0-100); for png a value 0-9 is the compression level.")
    processes_count: int = opt(2, "Worker processes that resize and re-encode (only with --resize_mode or "
                               "--encode_format).")
    dedupe: str = opt("none", "sha256: a body identical to one already stored (this run or an earlier one) is not "
                      "stored again: the row is skipped with reason duplicate and duplicate_of naming the kept key.",
                      choices=("none", "sha256"))
    quiet: bool = opt(False, "No progress bar; only the final summary.")
    batch_rows: int = opt(8192, "Manifest rows read per batch (memory stays bounded by this).")
    partition_id: str | None = opt(None, "Name of the partition this run downloads, carried by its telemetry "
                                   "(distribute sets part-NNNNN; the run_id names the distribute run).")
    host_budget: dict[str, float] = opt(
        {}, "Share in (0,1] of each named host's concurrency budget (C_init, C_max, a paced rate) this run gets; "
        "keys are host:port, or a host name for every port; distribute sets it from plan.json's budget_share for hosts "
        "split over partitions.")

    def check(self) -> None:
        if self.label == "":
            self.label = None  # `--label ""` unsets a config file's label: no class folders
        if not self.input:
            raise ConfigError("no input manifest given (--input or \"input\" in the config)")
        if not self.output:
            raise ConfigError("no output given (--output or \"output\" in the config)")
        problem = local_folder_problem(self.output)
        if problem:
            raise ConfigError(f"--output {self.output}: {problem}")
        for name in ("concurrent_downloads", "samples_per_shard", "max_body_bytes", "batch_rows", "image_size",
                     "processes_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, (most, why) in DOWNLOAD_BOUNDS.items():
            if getattr(self, name) > most:
                raise ConfigError(f"{name} must be <= {most:,}, got {getattr(self, name):,}: {why}")
        if not 0 < self.lease_ttl_s < 1e9:  # nan and inf too: the heartbeat waits a third of it
            raise ConfigError(f"lease_ttl_s must be a number of seconds > 0, got {self.lease_ttl_s}")
        if self.timeout <= 0:
            raise ConfigError(f"timeout must be > 0, got {self.timeout}")
        if not self.shard_max_seconds > 0:
            raise ConfigError(f"shard_max_seconds must be > 0, got {self.shard_max_seconds}")
        if not 0 <= self.encode_quality <= 100:
            raise ConfigError(f"encode_quality must be 0-100, got {self.encode_quality}")
        if self.max_retry_attempts < 0 or self.retry_backoff_sec < 0 or self.max_redirects < 0:
            raise ConfigError("max_retry_attempts, retry_backoff_sec and max_redirects must be >= 0")
        if self.cloud_tool and "://" in self.output and not self.output.startswith("file://"):
            raise ConfigError("cloud_tool uploads from a local output folder; give a local --output as staging")
        if self.cloud_tool == "custom" and not self.cloud_command:
            example = '["mc", "cp", "{file}", "{destination}/"]'
            raise ConfigError(f"cloud_tool custom needs cloud_command, e.g. {example}")
        if self.cloud_retries < 0 or not self.cloud_timeout_s > 0:
            raise ConfigError("cloud_retries must be >= 0 and cloud_timeout_s > 0")
        bad_env = [k for k, v in self.cloud_env.items() if not (v is None or isinstance(v, str))]
        if bad_env:
            raise ConfigError(f"cloud_env values must be text (or null to unset): {', '.join(bad_env)}")
        check_host_budget(self.host_budget)
        check_prefix(self.shard_prefix)
        self.check_paarc()
        self.check_network()
        self.check_politeness()


ENGINES = ("local", "workqueue", "taskvine")


@dataclass
class DistributeConfig(DownloadConfig):
    """`flowdc distribute`: the seed's TaskVine keys, plus every download option (passed to each task)."""

    input: str = opt("", "The partition folder or plan.json that `flowdc partition` wrote.",
                     aliases=("parquets_directory",))
    output: str = opt("", "Destination: each partition writes DEST/part-NNNNN/ (a local or shared folder, s3://, "
                      "gs://).", aliases=("output_directory",))
    create_tar: bool = opt(False, "Also pack each partition into DEST/part-NNNNN.tar (imagefolder only; "
                           "archive_format tar.gz: .tar.gz).")
    run_id: str | None = opt(None, "Name of this distribute run: distribute.json and every task carry it (their "
                             "telemetry, their object-store leases, so a rerun with the same run_id takes over a "
                             "crashed run's leases at once). Default: a new id per run.")
    telemetry: str | None = opt(None, "Not for distribute (refused): the manager writes every task's telemetry to "
                                "DEST/_flowdc/telemetry.jsonl.")
    telemetry_push: str | None = opt(None, "Not for distribute (refused): tasks push to the manager's collector "
                                     "(telemetry_host, telemetry_port).")
    partition_id: str | None = opt(None, "Not for distribute (refused): each task's is its partition, part-NNNNN.")
    force: bool = opt(False, "Start over: delete what flowdc wrote in DEST (every partition, the recorded plan, "
                      "summary, telemetry, index) once, before the first task; never other files. A task run "
                      "again after a lost or failed run still resumes.")
    engine: str = opt("local", "Where tasks run: local processes, Work Queue workers or TaskVine workers.",
                      choices=ENGINES)
    workers: int = opt(0, "local engine: partitions run at once (0 = one per CPU core).")
    port_number: int = opt(9123, "workqueue/taskvine: the manager's port (0 = any free port; it is printed).")
    task_cores: int = opt(1, "Cores each task asks of a worker.")
    task_memory_mb: int = opt(2048, "Memory (MB) each task asks of a worker.")
    task_disk_mb: int = opt(1024, "Sandbox disk (MB) each task asks of a worker.")
    timeout_minutes: float = opt(60.0, "Wall-time limit of one task (0 = none); a task over it is retried.")
    task_retries: int = opt(3, "Retries of a partition whose task failed (lost workers are always resubmitted).")
    worker_python: str = opt("", "Python on the workers that has flowdc installed; empty: this interpreter.")
    telemetry_host: str = opt("127.0.0.1", "Address of the manager's telemetry collector (0.0.0.0 for remote "
                              "workers).")
    telemetry_port: int = opt(0, "Port of the telemetry collector (0 = any free port).")
    dry_run: bool = opt(False, "Print the tasks and exit.")

    def check(self) -> None:
        if not self.output:
            raise ConfigError("no output given (--output, or \"output_directory\" in the config): the folder each "
                              "partition writes to; with cloud_tool, where their ledgers and overviews come back")
        super().check()
        # Download options distribute sets for each task itself: silently overwritten, they would mislead.
        for name, why in (("telemetry", "every task's telemetry goes to DEST/_flowdc/telemetry.jsonl"),
                          ("telemetry_push", "tasks push to the manager's collector (telemetry_host, telemetry_port)"),
                          ("partition_id", "each task's partition_id is its partition, part-NNNNN")):
            if getattr(self, name) is not None:
                raise ConfigError(f"{name} is not an option of distribute: {why}")
        for name in ("workers", "port_number", "task_cores", "task_memory_mb", "task_disk_mb", "task_retries",
                     "telemetry_port"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.timeout_minutes < 0:
            raise ConfigError(f"timeout_minutes must be >= 0, got {self.timeout_minutes}")
        if self.port_number > 65535 or self.telemetry_port > 65535:
            raise ConfigError("port_number and telemetry_port must be <= 65535")
        if self.cloud_tool and self.cloud_tool != "custom" and not self.cloud_destination:
            raise ConfigError(f"cloud_tool {self.cloud_tool} needs a cloud_destination (each partition ships to "
                              "CLOUD_DESTINATION/part-NNNNN)")


def check_host_budget(budget: Mapping[str, float]) -> dict[str, float]:
    """{host netloc: share in (0, 1]} as given (plan.json's budget_share), or a ConfigError."""
    checked: dict[str, float] = {}
    for host, share in budget.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError(f"host_budget: the share of {host!r} must be a number in (0, 1], got {share!r}")
        checked[str(host).lower()] = float(share)
    return checked


@dataclass
class PartitionConfig:
    input: str = opt("", "Manifest to split: parquet, csv/tsv/txt or xml (text also .gz, .bz2 or .zst "
                     "compressed), or excel (.xlsx/.xls).", aliases=("parquet",))
    url_col: str = opt("url", "Column holding the URLs.", aliases=("url",))
    groups: int = opt(0, "Number of partitions (or give --rows_per_partition).")
    rows_per_partition: int = opt(0, "Rows per partition; sets the number of groups.")
    output_folder: str = opt("", "Folder that receives the partitions and plan.json.", aliases=("output",))
    method: str = opt("host", "host: pack whole hosts; simple: equal sizes; greedy: balance by a column.",
                      choices=("host", "simple", "greedy"))
    group_col: str | None = opt(None, "Column that greedy balances (e.g. the class label).", aliases=("label",))
    seed: int | None = opt(None, "Shuffle seed for simple; fixes every random choice.")
    format: str = opt("parquet", "Partition file format.", choices=("parquet", "csv"))
    input_format: str = opt("auto", INPUT_FORMAT_HELP, choices=INPUT_FORMATS)
    quiet: bool = opt(False, "No progress output.")

    def check(self) -> None:
        if not self.input:
            raise ConfigError("no input manifest given (--input/--parquet)")
        if not self.output_folder:
            raise ConfigError("no output folder given (--output_folder)")
        if (self.groups > 0) == (self.rows_per_partition > 0):
            raise ConfigError("give exactly one of --groups and --rows_per_partition (a positive number)")
        if self.method == "greedy" and not self.group_col:
            raise ConfigError("method greedy needs --group_col (the column to balance)")


SIZE_REPORT_NAME = "size_report.json"


@dataclass
class SizeConfig(PolitenessOptions, NetworkOptions, RedactOptions, PaarcOptions):
    input: str | None = opt(None, "One manifest to estimate.")
    directory: str | None = opt(None, "A folder of manifests (e.g. partitions) to estimate together.")
    url_column: str = opt("url", "Column holding the URLs.", aliases=("url_col", "url"))
    input_format: str = opt("auto", INPUT_FORMAT_HELP, choices=INPUT_FORMATS)
    sample: int = opt(0, "Ask only this many random URLs and extrapolate with a 95% CI (0 = all).")
    seed: int = opt(0, "Seed for the sample.")
    concurrent_requests: int = opt(200, "Global bound on requests in flight.")
    timeout: float = opt(15.0, "Seconds allowed per request.")
    max_redirects: int = opt(5, "Redirects followed per URL.")
    rate_mb_s: float = opt(100.0, "Download rate used for the time estimate, in MB/s.")
    report: str | None = opt(None, "Write the JSON report here, a local path (default: size_report.json beside the "
                             "input, in the --directory, or in the working folder for a manifest on a store).")
    quiet: bool = opt(False, "No progress bar.")

    def report_path(self) -> str:
        if self.report:
            return self.report
        if self.directory:
            return os.path.join(self.directory, SIZE_REPORT_NAME)
        if "://" in (self.input or ""):  # a manifest on a store: the report goes to the working folder
            return SIZE_REPORT_NAME
        return os.path.join(os.path.dirname(self.input or ""), SIZE_REPORT_NAME)

    def check(self) -> None:
        if bool(self.input) == bool(self.directory):
            raise ConfigError("give exactly one of --input and --directory")
        if self.sample < 0:
            raise ConfigError("--sample must be >= 0")
        for name in ("concurrent_requests", "timeout", "rate_mb_s"):
            if not getattr(self, name) > 0:  # 0 requests ask nothing; a rate of 0 or less times nothing
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        # Checked before the first request: the report is written only after the last one.
        problem = local_file_problem(self.report_path())
        if problem:
            raise ConfigError(f"--report {self.report_path()}: {problem}")
        if self.max_redirects < 0:
            raise ConfigError(f"max_redirects must be >= 0, got {self.max_redirects}")
        self.check_paarc()
        self.check_network()
        self.check_politeness()


C = TypeVar("C")
_TYPE_NAMES = {"bool": "true or false", "int": "an integer", "float": "a number", "list": "a list of strings",
               "dict": "a JSON object", "str": "text"}


def cli_fields(cls: type) -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(cls))


def _coerce(cls_name: str, f: dataclasses.Field[Any], value: Any) -> Any:
    """Check a JSON value against the field's declared type; JSON gives us loose types."""
    kind = str(f.type)
    if value is None:
        if "None" in kind:
            return None
        raise ConfigError(f"{f.name} may not be null")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            number = float(value)
            if not math.isfinite(number):  # inf overflows timers, nan compares false everywhere
                raise ConfigError(f"{f.name} must be a finite number, got {value!r}")
            return number
        if kind.startswith("list"):
            if isinstance(value, str) and value.lstrip().startswith("["):  # a JSON list, as the help shows
                value = json.loads(value)
            if isinstance(value, str):
                return [v for v in value.split(",") if v]
            if not isinstance(value, list):
                raise TypeError
            return [str(v) for v in value]
        if kind.startswith("dict"):
            if not isinstance(value, dict):
                raise TypeError
            return value
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError):
        base = kind.split("[")[0].split(" ")[0]
        raise ConfigError(f"{f.name}: expected {_TYPE_NAMES.get(base, base)}, got {value!r}") from None


def build_config(cls: type[C], config_file: str | None, overrides: dict[str, Any]) -> C:
    """JSON file first, then CLI overrides (only the options actually given), then checks."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_json_config(config_file))
    values.update({k: v for k, v in overrides.items() if v is not None})
    by_name: dict[str, dataclasses.Field[Any]] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        by_name[f.name] = f
        for alias in f.metadata.get("aliases", ()):
            by_name.setdefault(alias, f)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        f = by_name.get(key)
        if f is None:
            known = ", ".join(sorted(x.name for x in dataclasses.fields(cls)))  # type: ignore[arg-type]
            raise ConfigError(f"unknown option {key!r}; known: {known}")
        value = _coerce(cls.__name__, f, value)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:  # null: an optional choice left unset
            raise ConfigError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        kwargs[f.name] = value
    cfg = cls(**kwargs)
    check = getattr(cfg, "check", None)
    if check:
        check()
    return cfg


def read_json_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{path} is a folder; give the config file (a .json) in it")
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def public_dict(cfg: Any) -> dict[str, Any]:
    """The config as recorded in outputs: storage option values are dropped and URLs redacted
    (unless --no_redact_urls), since either may hold secrets."""
    d = dataclasses.asdict(cfg)
    for name in ("storage_options", "input_storage_options", "cloud_env"):
        if name in d:
            d[name] = sorted(d[name])  # keys only
    if d.get("proxy"):
        d["proxy"] = redact_url(d["proxy"])  # a proxy's password never reaches a file, whatever redact_urls says
    if not d.get("redact_urls", True):
        return d
    names = secret_param_names(d.get("redact_params", DEFAULT_SECRET_PARAMS))
    for key, value in d.items():
        if isinstance(value, str):
            d[key] = redact_urls_in(value, names)
        elif isinstance(value, list) and key != "redact_params":
            d[key] = [redact_urls_in(v, names) if isinstance(v, str) else v for v in value]
    return d
