"""Command uploaders: push a finished local file to remote storage with an external tool.

The seed's `cloud_tool` values map onto one argv each (gocmd, aws, gsutil, rclone, scp), plus
`custom` for any other CLI given as an argv template. Commands always run as an argv list with
no shell, so spaces, quotes or `$` in paths are passed through literally.

Guarantees:
- the local staging file is removed only after the tool exited 0 (and, for rclone, the remote
  size matched), so a failed upload never loses data;
- any non-zero exit is retried with exponential backoff; a missing executable is not, since
  retrying cannot fix it;
- every message this module logs or raises goes through `redact`, tool stderr included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from flowdc.errors import ConfigError
from flowdc.urls import MASK, redact_urls_in

log = logging.getLogger(__name__)

TOOLS: Final = ("gocmd", "aws", "gsutil", "rclone", "scp", "custom")
PLACEHOLDERS: Final = ("file", "destination", "name", "remote")  # usable in a custom template
_PLACEHOLDER: Final = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

# Per-tool environment changes applied before the spec's own overrides (None = unset).
# rclone 1.60's S3 backend fails with LoadCustomCABundleError ("unsupported transport") whenever
# AWS_CA_BUNDLE is set, even to a valid bundle; other tools (aws, s3fs) still need it.
TOOL_ENV: Final[Mapping[str, Mapping[str, str | None]]] = {"rclone": {"AWS_CA_BUNDLE": None}}

_MAX_BACKOFF_S: Final = 60.0
_STDERR_TAIL_CHARS: Final = 400


class UploadError(RuntimeError):
    """An upload failed for good; the message is one redacted line, the local file is kept."""


@dataclass(frozen=True)
class UploadSpec:
    """How to upload: which tool, where to, and how hard to try."""

    tool: str
    destination: str
    template: list[str] | None = None
    retries: int = 3
    backoff_s: float = 1.0
    timeout_s: float = 3600
    extra_args: tuple[str, ...] = ()
    env: Mapping[str, str | None] = field(default_factory=dict)
    verify: bool = True

    def __post_init__(self) -> None:
        if self.tool not in TOOLS:
            raise ConfigError(f"cloud_tool must be one of {', '.join(TOOLS)}; got {self.tool!r}")
        if self.tool == "custom":
            _check_template(self.template)
        elif not self.destination:
            raise ConfigError(f"cloud_tool {self.tool} needs a cloud_destination")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ConfigError("upload retries and backoff must be >= 0 and timeout > 0")


def spec_of(options: Mapping[str, Any]) -> UploadSpec:
    """The upload a download's cloud_* options ask for: a DownloadConfig's fields, or a task's JSON."""
    return UploadSpec(tool=options["cloud_tool"], destination=options.get("cloud_destination") or "",
                      template=list(options.get("cloud_command") or []) or None,
                      extra_args=tuple(options.get("cloud_args") or ()), env=dict(options.get("cloud_env") or {}),
                      retries=int(options.get("cloud_retries", 3)),
                      timeout_s=float(options.get("cloud_timeout_s", 3600)))


def _check_template(template: list[str] | None) -> None:
    if isinstance(template, str):
        raise ConfigError("the custom upload template must be a list of arguments, not one shell string")
    if not template:
        example = '["mc", "cp", "{file}", "{destination}/"]'
        raise ConfigError(f"cloud_tool custom needs a template, e.g. {example}")
    if not any("{file}" in part for part in template):
        raise ConfigError("the custom upload template must contain {file}")


# --------------------------------------------------------------------------- argv


def join_remote(destination: str, name: str) -> str:
    """`dest/name`, except after a bare `remote:` or `host:` where a `/` would mean the root."""
    if not destination:
        return name
    if destination.endswith((":", "/")):
        return destination + name
    return f"{destination}/{name}"


def _with_scheme(destination: str, scheme: str) -> str:
    # Accept "bucket/prefix" as well as "s3://bucket/prefix"; both name the same place.
    return destination if destination.startswith(scheme) else scheme + destination.lstrip("/")


def _fill(part: str, values: Mapping[str, str]) -> str:
    # One regex pass, so placeholder-like text inside a substituted path is never expanded again.
    return _PLACEHOLDER.sub(lambda m: values[m[1]], part)


# Fixed argv head per tool; extra_args follow it, then LOCAL and the remote target.
_COMMANDS: Final[Mapping[str, tuple[str, ...]]] = {
    "gocmd": ("gocmd", "put", "-f"),  # gocmd put [flags] LOCAL TARGET; -f overwrites instead of prompting
    "aws": ("aws", "s3", "cp", "--no-progress"),
    "gsutil": ("gsutil", "cp"),
    "rclone": ("rclone", "copyto"),  # copyto (not copy) so the remote gets exactly remote_name
    "scp": ("scp", "-B"),  # -B: batch mode, fail instead of asking for a password
}
_SCHEMES: Final[Mapping[str, str]] = {"aws": "s3://", "gsutil": "gs://"}


def remote_target(spec: UploadSpec, remote_name: str) -> str:
    """Where `remote_name` lands, in the tool's own syntax."""
    scheme = _SCHEMES.get(spec.tool)
    dest = _with_scheme(spec.destination, scheme) if scheme else spec.destination
    return join_remote(dest, remote_name)


def build_argv(spec: UploadSpec, local_file: str, remote_name: str) -> list[str]:
    """The argv that uploads `local_file` as `remote_name` under `spec.destination`."""
    # Absolute local paths keep rclone/scp from reading "a:b.tar" as a remote and "-x" as a flag.
    local = os.path.abspath(local_file)
    remote = remote_target(spec, remote_name)
    if spec.tool != "custom":
        return [*_COMMANDS[spec.tool], *spec.extra_args, local, remote]
    values = {"file": local, "destination": spec.destination, "name": remote_name, "remote": remote}
    assert spec.template is not None  # checked in UploadSpec.__post_init__
    return [_fill(part, values) for part in spec.template] + list(spec.extra_args)


def build_env(spec: UploadSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: `base` (os.environ), then the tool's defaults, then the spec's."""
    env = dict(os.environ if base is None else base)
    for changes in (TOOL_ENV.get(spec.tool, {}), spec.env):
        apply_env_changes(env, changes)
    return env


def apply_env_changes(env: dict[str, str], changes: Mapping[str, str | None]) -> None:
    """Set each variable in `changes`; a None value removes it."""
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value


# --------------------------------------------------------------------------- redaction

# Env var names whose values are credentials (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
# RCLONE_CONFIG_X_SECRET_ACCESS_KEY, RCLONE_CONFIG_X_PASS, IRODS_USER_PASSWORD, ...).
_SECRET_NAME = re.compile(
    r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY|AUTH|(^|_)PASS($|_)",
    re.IGNORECASE,
)
# Shorter values are too likely to be ordinary words ("1", "true") to mask everywhere.
_MIN_SECRET_LEN: Final = 4
_SECRET_FLAG = re.compile(
    r"(?<!\S)(?P<flag>--?[\w-]*(?:secret|password|passwd|token|access-key|api-key|credential)[\w-]*[= ])"
    r"(?P<val>\S+)",
    re.IGNORECASE,
)


def secret_values(env: Mapping[str, str | None] | None = None) -> set[str]:
    """Values of secret-looking variables in os.environ and in `env` (e.g. a spec's overrides)."""
    found: set[str] = set()
    for source in (os.environ, env or {}):
        for name, value in source.items():
            if value and len(value) >= _MIN_SECRET_LEN and _SECRET_NAME.search(name):
                found.add(value)
    return found


def redact(text: str, extra_secrets: Iterable[str] = ()) -> str:
    """Mask known secret values, URLs' userinfo and secret query parameters (flowdc.urls), and flags."""
    secrets = secret_values() | {s for s in extra_secrets if s and len(s) >= _MIN_SECRET_LEN}
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = redact_urls_in(text)
    return _SECRET_FLAG.sub(lambda m: m["flag"] + MASK, text)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    joined = " | ".join(lines)
    return joined if len(joined) <= _STDERR_TAIL_CHARS else "..." + joined[-_STDERR_TAIL_CHARS:]


# --------------------------------------------------------------------------- running


class _TimedOut(Exception):
    """The tool ran past timeout_s and was killed; counts as a failed (retryable) attempt."""


@dataclass(frozen=True)
class _Attempt:
    ok: bool
    detail: str  # unredacted; always pass through CommandUploader._redact before showing


class CommandUploader:
    """Uploads files with one external tool, retrying and redacting as the module doc says."""

    def __init__(self, spec: UploadSpec, sleep: Callable[[float], object] | None = None) -> None:
        self.spec = spec
        self._stopped = threading.Event()
        self._sleep = sleep or self._stopped.wait  # injectable so tests need not wait for real backoff
        self._running: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()

    def stop(self) -> None:
        """The run was stopped (Ctrl-C, SIGTERM): kill the uploads under way and start no more. Their
        files stay in the local output, and the next run ships them."""
        self._stopped.set()
        with self._lock:
            for proc in self._running:
                _kill_group(proc)

    def upload(self, local_file: str, remote_name: str) -> None:
        """Upload and confirm; raise UploadError after the last failed attempt. Keeps the file."""
        if not os.path.isfile(local_file):
            raise UploadError(self._redact(f"{self.spec.tool}: local file {local_file} does not exist"))
        argv = build_argv(self.spec, local_file, remote_name)
        attempts = self.spec.retries + 1
        last = _Attempt(ok=False, detail="not run")
        for attempt in range(1, attempts + 1):
            if self._stopped.is_set():
                break
            last = self._attempt(argv, local_file, remote_name)
            if last.ok:
                log.debug("uploaded %s", self._redact(shlex.join(argv)))
                return
            if attempt < attempts and not self._stopped.is_set():
                delay = min(self.spec.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S)
                log.warning(
                    "upload attempt %d/%d failed, retrying in %.1fs: %s",
                    attempt, attempts, delay, self._redact(last.detail),
                )
                self._sleep(delay)
        if self._stopped.is_set():
            raise UploadError(self._redact(f"{self.spec.tool}: the run was stopped; {local_file} stays for the next "
                                           "run to ship"))
        raise UploadError(self._redact(
            f"{self.spec.tool} upload of {local_file} to {remote_target(self.spec, remote_name)} "
            f"failed after {attempts} attempt(s): {last.detail}"
        ))

    def upload_and_remove(self, local_file: str, remote_name: str) -> None:
        """Upload, then delete the local staging file; on failure the file stays."""
        self.upload(local_file, remote_name)
        Path(local_file).unlink(missing_ok=True)

    def _attempt(self, argv: list[str], local_file: str, remote_name: str) -> _Attempt:
        try:
            return self._try_once(argv, local_file, remote_name)
        except _TimedOut:
            return _Attempt(False, f"timed out after {self.spec.timeout_s:g}s")

    def _try_once(self, argv: list[str], local_file: str, remote_name: str) -> _Attempt:
        result = self._run(argv)
        if result.returncode != 0:
            return _Attempt(False, f"exit {result.returncode}: {_one_line(result.stderr) or '(no stderr)'}")
        if self.spec.tool == "rclone" and self.spec.verify:
            return self._verify_rclone(local_file, remote_target(self.spec, remote_name))
        return _Attempt(True, "")

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.Popen(
                argv,
                env=build_env(self.spec),
                stdin=subprocess.DEVNULL,  # a tool that prompts (gocmd, scp) fails instead of hanging
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                start_new_session=True,  # own process group, so a timeout can kill its helpers too
            )
        except FileNotFoundError:
            raise UploadError(self._missing_message(argv[0])) from None
        except PermissionError:
            raise UploadError(self._redact(f"{argv[0]} is not executable; fix its permissions")) from None
        with self._lock:
            self._running.add(proc)
            if self._stopped.is_set():  # stopped while it started
                _kill_group(proc)
        try:
            return _communicate(proc, argv, self.spec.timeout_s)
        finally:
            with self._lock:
                self._running.discard(proc)

    def missing_tool(self) -> str | None:
        """Why the tool cannot be run at all (not on PATH), or None: checked before a run fetches anything."""
        program = build_argv(self.spec, "probe", "probe")[0]
        return None if self._on_path(program) else self._missing_message(program)

    def _on_path(self, program: str) -> bool:
        return shutil.which(program, path=build_env(self.spec).get("PATH")) is not None

    def _missing_message(self, program: str) -> str:
        if self._on_path(program):
            # It is on PATH, so what is missing is its interpreter (a broken #! line).
            return self._redact(f"{program} could not be started; check its #! interpreter")
        return self._redact(f"{program} not found on PATH; install it or choose another cloud_tool")

    def _verify_rclone(self, local_file: str, remote: str) -> _Attempt:
        # rclone exits 0 when it skipped the file (a filter or --ignore-existing in extra_args), so
        # compare the stored size. extra_args go along: they carry backend options lsjson needs too.
        result = self._run(["rclone", "lsjson", "--stat", *self.spec.extra_args, remote])
        if result.returncode != 0:
            return _Attempt(False, f"rclone lsjson exit {result.returncode}: {_one_line(result.stderr)}")
        try:
            size = int(json.loads(result.stdout)["Size"])
        except (ValueError, KeyError, TypeError):
            return _Attempt(False, f"rclone lsjson gave unreadable output for {remote}")
        expected = os.path.getsize(local_file)
        if size != expected:
            return _Attempt(False, f"size check failed for {remote}: remote {size} bytes, local {expected}")
        return _Attempt(True, "")

    def _redact(self, text: str) -> str:
        return redact(text, extra_secrets=secret_values(self.spec.env))


def _communicate(
    proc: subprocess.Popen[str], argv: list[str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # Kill the whole group: a surviving grandchild would hold the pipes open.
            _kill_group(proc)
            proc.communicate()
            raise _TimedOut from None
        except BaseException:
            _kill_group(proc)  # e.g. KeyboardInterrupt: leave no orphaned upload behind
            raise
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def upload_async(
    uploader: CommandUploader, local_file: str, remote_name: str, *, remove: bool = True
) -> None:
    """Run an upload in a worker thread so the asyncio downloader keeps fetching meanwhile."""
    action = uploader.upload_and_remove if remove else uploader.upload
    await asyncio.to_thread(action, local_file, remote_name)
