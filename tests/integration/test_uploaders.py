"""Command uploaders (flowdc.uploaders) against real tools where this machine has them.

- gocmd: tests/stand_ins/gocmd is a STAND-IN script, not CyVerse's gocmd: no iRODS server and no
  gocmd can be installed here. It checks the argv shape build_argv produces and copies the file
  under $GOCMD_STANDIN_ROOT at the iRODS path; it can fail its first K calls for retry tests.
- rclone: the real Debian rclone, to a local path and to S3 on an in-process moto server.
- custom: real `cp`, `sh`, `sleep`, `false` through argv templates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from flowdc.config import ConfigError
from flowdc.uploaders import (
    CommandUploader,
    UploadError,
    UploadSpec,
    build_argv,
    build_env,
    redact,
    upload_async,
)
from tests.cloud_servers import S3_ACCESS_KEY, S3_SECRET_KEY, s3_endpoint, s3_filesystem  # noqa: F401

STAND_INS = Path(__file__).resolve().parents[1] / "stand_ins"
# Spaces, both quote kinds, a `$` and a colon: any shell or remote parsing would mangle it.
AWKWARD = "we ird 'dir\" $HOME:x"
needs_rclone = pytest.mark.skipif(
    shutil.which("rclone") is None, reason="rclone not installed (apt-get install rclone)"
)


def make_file(folder: Path, name: str = "shard 0001.tar", data: bytes = b"payload " * 100) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


def quick(spec_kwargs: dict[str, object], sleeps: list[float] | None = None) -> CommandUploader:
    """An uploader with fast backoff whose sleeps are recorded instead of waited."""
    spec = UploadSpec(**{"backoff_s": 0.5, **spec_kwargs})  # type: ignore[arg-type]
    return CommandUploader(spec, sleep=(sleeps if sleeps is not None else []).append)


# --------------------------------------------------------------------------- argv shapes


def test_build_argv_per_tool(tmp_path: Path) -> None:
    local = str(make_file(tmp_path / AWKWARD))
    shapes = {
        ("gocmd", "/iplant/home/u/ds"): ["gocmd", "put", "-f", local, "/iplant/home/u/ds/a b.tar"],
        ("aws", "my-bkt/pre"): ["aws", "s3", "cp", "--no-progress", local, "s3://my-bkt/pre/a b.tar"],
        ("gsutil", "gs://my-bkt"): ["gsutil", "cp", local, "gs://my-bkt/a b.tar"],
        ("rclone", "remote:"): ["rclone", "copyto", local, "remote:a b.tar"],
        ("scp", "host:data/"): ["scp", "-B", local, "host:data/a b.tar"],
    }
    for (tool, dest), expected in shapes.items():
        assert build_argv(UploadSpec(tool=tool, destination=dest), local, "a b.tar") == expected


def test_build_argv_extra_args_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec = UploadSpec(tool="gocmd", destination="/zone/c", extra_args=("-K", "--icat"))
    # "a:b" would be a remote for rclone/scp and "-x" a flag; absolute paths rule both out.
    expected = ["gocmd", "put", "-f", "-K", "--icat", f"{tmp_path}/-x a:b.tar", "/zone/c/n"]
    assert build_argv(spec, "-x a:b.tar", "n") == expected


def test_custom_template_substitutes_each_element_once() -> None:
    template = ["mc", "cp", "{file}", "{destination}/"]
    spec = UploadSpec(tool="custom", destination="minio/bkt", template=template)
    assert build_argv(spec, "/d/{destination}.tar", "x") == ["mc", "cp", "/d/{destination}.tar", "minio/bkt/"]


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="cloud_tool must be one of"):
        UploadSpec(tool="ftp", destination="x")
    with pytest.raises(ConfigError, match="needs a template"):
        UploadSpec(tool="custom", destination="x")
    with pytest.raises(ConfigError, match="not one shell string"):
        UploadSpec(tool="custom", destination="x", template="cp {file} x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must contain"):
        UploadSpec(tool="custom", destination="x", template=["cp", "a", "b"])
    with pytest.raises(ConfigError, match="needs a cloud_destination"):
        UploadSpec(tool="rclone", destination="")


def test_rclone_env_drops_ca_bundle_only_for_rclone() -> None:
    base = {"AWS_CA_BUNDLE": "/etc/ssl/ca.pem", "PATH": "/bin"}
    assert "AWS_CA_BUNDLE" not in build_env(UploadSpec(tool="rclone", destination="r:"), base)
    assert build_env(UploadSpec(tool="aws", destination="b"), base)["AWS_CA_BUNDLE"] == "/etc/ssl/ca.pem"
    spec = UploadSpec(tool="aws", destination="b", env={"AWS_CA_BUNDLE": None, "X": "1"})
    assert build_env(spec, base) == {"PATH": "/bin", "X": "1"}


# --------------------------------------------------------------------------- gocmd stand-in


@pytest.fixture
def gocmd_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Puts the gocmd stand-in first on PATH; returns the folder standing for the iRODS zone."""
    root = tmp_path / "irods"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{STAND_INS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("GOCMD_STANDIN_ROOT", str(root))
    monkeypatch.setenv("GOCMD_STANDIN_COUNTER", str(tmp_path / "gocmd-calls"))
    monkeypatch.setenv("GOCMD_STANDIN_LOG", str(tmp_path / "gocmd-argv.jsonl"))
    monkeypatch.delenv("GOCMD_STANDIN_FAIL_FIRST", raising=False)
    return root


def test_gocmd_upload_and_remove(gocmd_root: Path, tmp_path: Path) -> None:
    """Against the gocmd STAND-IN (no iRODS/gocmd installable here): argv shape and placement."""
    local = make_file(tmp_path / AWKWARD)
    uploader = quick({"tool": "gocmd", "destination": "/iplant/home/alice/flow dc"})
    uploader.upload_and_remove(str(local), "a 'b'.tar")
    stored = gocmd_root / "iplant/home/alice/flow dc/a 'b'.tar"
    assert stored.read_bytes() == b"payload " * 100
    assert not local.exists()
    (argv,) = [json.loads(line) for line in (tmp_path / "gocmd-argv.jsonl").read_text().splitlines()]
    assert argv == ["put", "-f", str(local), "/iplant/home/alice/flow dc/a 'b'.tar"]


def test_gocmd_retries_transient_failures(
    gocmd_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gocmd STAND-IN fails its first two calls; the third attempt lands the file."""
    monkeypatch.setenv("GOCMD_STANDIN_FAIL_FIRST", "2")
    local = make_file(tmp_path / "staging")
    sleeps: list[float] = []
    uploader = quick({"tool": "gocmd", "destination": "/zone/c", "retries": 3}, sleeps)
    uploader.upload_and_remove(str(local), "s.tar")
    assert (gocmd_root / "zone/c/s.tar").exists()
    assert not local.exists()
    assert sleeps == [0.5, 1.0]  # exponential backoff between the three attempts
    assert (tmp_path / "gocmd-calls").read_text() == "3"


def test_gocmd_gives_up_and_keeps_the_file(
    gocmd_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gocmd STAND-IN always fails: UploadError after retries + 1 attempts, local file kept."""
    monkeypatch.setenv("GOCMD_STANDIN_FAIL_FIRST", "99")
    local = make_file(tmp_path / "staging")
    uploader = quick({"tool": "gocmd", "destination": "/zone/c", "retries": 2})
    with pytest.raises(UploadError, match=r"after 3 attempt\(s\).*simulated transient failure"):
        uploader.upload_and_remove(str(local), "s.tar")
    assert local.exists()
    assert not (gocmd_root / "zone/c/s.tar").exists()


def test_upload_async_runs_off_the_event_loop(gocmd_root: Path, tmp_path: Path) -> None:
    locals_ = [make_file(tmp_path / "staging", f"{i}.tar") for i in range(3)]
    uploader = quick({"tool": "gocmd", "destination": "/zone/async"})

    async def run_all() -> None:
        await asyncio.gather(*(upload_async(uploader, str(p), p.name) for p in locals_))

    asyncio.run(run_all())
    assert sorted(p.name for p in (gocmd_root / "zone/async").iterdir()) == ["0.tar", "1.tar", "2.tar"]
    assert not any(p.exists() for p in locals_)


# --------------------------------------------------------------------------- failures


def test_missing_executable_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    local = make_file(tmp_path)
    sleeps: list[float] = []
    with pytest.raises(UploadError) as err:
        quick({"tool": "gocmd", "destination": "/zone/c"}, sleeps).upload_and_remove(str(local), "x")
    assert str(err.value) == "gocmd not found on PATH; install it or choose another cloud_tool"
    assert sleeps == []  # not retried
    assert local.exists()


def test_missing_local_file_is_not_retried(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match="does not exist"):
        quick({"tool": "custom", "destination": "d", "template": ["true", "{file}"]}).upload(
            str(tmp_path / "nope"), "x")


def test_timeout_kills_the_tool_and_its_children(tmp_path: Path) -> None:
    local = make_file(tmp_path)
    # A background grandchild holding stdout/stderr open must not stall the timeout.
    template = ["sh", "-c", "sleep 30 & sleep 30", "sh", "{file}"]
    spec = {"tool": "custom", "destination": "d", "template": template, "timeout_s": 0.3, "retries": 1}
    uploader = quick(spec)
    started = time.monotonic()
    with pytest.raises(UploadError, match=r"after 2 attempt\(s\): timed out after 0.3s"):
        uploader.upload_and_remove(str(local), "x")
    assert time.monotonic() - started < 5
    assert local.exists()


# --------------------------------------------------------------------------- custom template


def test_custom_cp_with_spaces_and_quotes(tmp_path: Path) -> None:
    local = make_file(tmp_path / AWKWARD, name="it's a \"shard\".tar")
    dest = tmp_path / "out dir $USER"
    dest.mkdir()
    spec = {"tool": "custom", "destination": str(dest), "template": ["cp", "--", "{file}", "{destination}/"]}
    quick(spec).upload_and_remove(str(local), "ignored")
    assert (dest / "it's a \"shard\".tar").read_bytes() == b"payload " * 100
    assert not local.exists()


def test_custom_remote_placeholder_renames(tmp_path: Path) -> None:
    local = make_file(tmp_path / "src")
    spec = {"tool": "custom", "destination": str(tmp_path / "dst"), "template": ["cp", "{file}", "{remote}"]}
    (tmp_path / "dst").mkdir()
    quick(spec).upload(str(local), "renamed 'x'.tar")
    assert (tmp_path / "dst" / "renamed 'x'.tar").exists()
    assert local.exists()  # upload() alone never removes the staging file


# --------------------------------------------------------------------------- redaction


def test_secret_echoed_by_tool_is_redacted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecret123")
    local = make_file(tmp_path)
    script = 'echo "auth failed with key $AWS_SECRET_ACCESS_KEY" >&2; exit 3'
    spec = {"tool": "custom", "destination": "https://bob:hunter2pw@store.invalid/up?token=tok3n",
            "template": ["sh", "-c", script, "sh", "{file}", "{remote}"], "retries": 1}
    with caplog.at_level(logging.WARNING, logger="flowdc.uploaders"), pytest.raises(UploadError) as err:
        quick(spec).upload_and_remove(str(local), "x")
    message = str(err.value)
    assert "auth failed with key ***" in message
    for text in (message, caplog.text):
        assert "supersecret123" not in text and "hunter2pw" not in text and "tok3n" not in text
    assert "upload attempt 1/2 failed" in caplog.text
    assert local.exists()


def test_redact_patterns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY", "s3cr3t-value")
    monkeypatch.setenv("IRODS_USER_PASSWORD", "irodspw")
    text = ("key s3cr3t-value pw irodspw url sftp://u:p4ss@h/x "
            "q https://h/o?X-Amz-Signature=abc123&x=1 flag --s3-secret-access-key zzz --password=yyy")
    assert redact(text) == (
        "key *** pw *** url sftp://***@h/x "
        "q https://h/o?X-Amz-Signature=***&x=1 flag --s3-secret-access-key *** --password=***"
    )
    assert redact("path /data/my-secret-stuff/f.tar ok") == "path /data/my-secret-stuff/f.tar ok"
    # Parameter names match whole (the one URL helper of flowdc.urls): `monkey=` is not `key=`.
    assert redact("https://h/o?monkey=1&key=2") == "https://h/o?monkey=1&key=***"


# --------------------------------------------------------------------------- rclone (real)


@needs_rclone
@pytest.mark.parametrize("prefix", ["", ":local:"])
def test_rclone_to_local_path(tmp_path: Path, prefix: str) -> None:
    local = make_file(tmp_path / AWKWARD)
    dest = tmp_path / "remote side"
    quick({"tool": "rclone", "destination": f"{prefix}{dest}/sub"}).upload_and_remove(str(local), "a 'b'.tar")
    assert (dest / "sub" / "a 'b'.tar").read_bytes() == b"payload " * 100
    assert not local.exists()


@needs_rclone
def test_rclone_to_moto_s3(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    fs = s3_filesystem(s3_endpoint)
    fs.mkdir("rclone-bkt")
    # Set on purpose: rclone 1.60 fails while it is set, so the uploader must drop it for rclone.
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    env = {
        "RCLONE_CONFIG_MYS3_TYPE": "s3",
        "RCLONE_CONFIG_MYS3_PROVIDER": "Other",
        "RCLONE_CONFIG_MYS3_ENDPOINT": s3_endpoint,
        "RCLONE_CONFIG_MYS3_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "RCLONE_CONFIG_MYS3_SECRET_ACCESS_KEY": S3_SECRET_KEY,
    }
    local = make_file(tmp_path / "staging", data=b"x" * 50_000)
    quick({"tool": "rclone", "destination": "mys3:rclone-bkt/run 1", "env": env}).upload_and_remove(
        str(local), "shard-000.tar")
    assert fs.cat("rclone-bkt/run 1/shard-000.tar") == b"x" * 50_000
    assert not local.exists()


@needs_rclone
def test_rclone_failure_keeps_file_and_hides_secret(s3_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    env = {
        "RCLONE_CONFIG_BAD_TYPE": "s3",
        "RCLONE_CONFIG_BAD_PROVIDER": "Other",
        "RCLONE_CONFIG_BAD_ENDPOINT": s3_endpoint,
        "RCLONE_CONFIG_BAD_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "RCLONE_CONFIG_BAD_SECRET_ACCESS_KEY": "very-secret-rclone-key",
    }
    local = make_file(tmp_path / "staging")
    # Secret on the command line too, as a user might pass it in extra_args.
    spec = {"tool": "rclone", "destination": "bad:no-such-bucket/x", "env": env, "retries": 0,
            "extra_args": ("--retries", "1", "--low-level-retries", "1", "--s3-no-check-bucket",
                           "--s3-secret-access-key", "very-secret-rclone-key")}
    with pytest.raises(UploadError) as err:
        quick(spec).upload_and_remove(str(local), "s.tar")
    assert "very-secret-rclone-key" not in str(err.value)
    assert "exit " in str(err.value)
    assert local.exists()
