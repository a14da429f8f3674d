"""Config and CLI: every seed option exists and is documented, JSON + CLI overrides, user errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from flowdc.cli import build_parser, config_from_args, main
from flowdc.config import ConfigError, DownloadConfig, build_config, public_dict

SEED_OPTIONS = (
    "--config", "--input", "--input_format", "--output", "--output_format", "--url", "--label",
    "--concurrent_downloads", "--timeout", "--max_retry_attempts", "--retry_backoff_sec", "--enable_paarc",
    "--disable_paarc", "--C_init", "--C_min", "--C_max", "--mu", "--beta", "--theta_50", "--theta_95",
    "--probe_rtt_period", "--alpha_ema", "--naming_mode", "--create_tar", "--create_overview",
)


def parse(*argv: str) -> DownloadConfig:
    args = build_parser().parse_args(["download", *argv])
    cfg = config_from_args(DownloadConfig, args)
    assert isinstance(cfg, DownloadConfig)
    return cfg


def write_json(tmp_path: Path, data: Any, name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`flowdc download --help` names every seed option and every config field, with defaults."""
    with pytest.raises(SystemExit) as exc:
        main(["download", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in SEED_OPTIONS:
        assert option in text, option
    for f in dataclasses.fields(DownloadConfig):
        assert f"--{f.name}" in text, f.name
    assert "(default: 1000)" in text and "(default: imagefolder)" in text


def test_boolean_options_show_both_spellings(capsys: pytest.CaptureFixture[str]) -> None:
    """Usage and help name --X and --no_X (and --disable_paarc) for every switch, with its default as
    on or off; each spelling still sets the config."""
    with pytest.raises(SystemExit):
        main(["download", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    usage = text.split(" options: ")[0]
    for f in dataclasses.fields(DownloadConfig):
        if str(f.type).startswith("bool"):
            assert f"[--{f.name} | --no_{f.name}" in usage, f.name
            assert f"--{f.name}, --no_{f.name}" in text, f.name
    assert "[--enable_paarc | --no_enable_paarc | --disable_paarc]" in usage
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "masked (whole names, any case). (default:" in text  # other options keep their defaults
    assert "--no_redact_urls keeps URLs whole. (default: on)" in text and "(default: off)" in text
    io = ("--input", "m.parquet", "--output", "out")
    for argv, expected in ((["--no_create_overview"], False), (["--create_overview"], True), ([], True)):
        assert parse(*io, *argv).create_overview is expected
    assert parse(*io, "--disable_paarc").enable_paarc is False and parse(*io, "--no_insecure").insecure is False
    assert parse(*io, "--no_block_link_local").block_link_local is False


def test_every_seed_option_reaches_the_config() -> None:
    """Each seed option given on the command line lands in the DownloadConfig unchanged."""
    cfg = parse(
        "--input", "m.csv", "--input_format", "csv", "--output", "out", "--output_format", "webdataset",
        "--url", "photo", "--label", "species", "--concurrent_downloads", "17", "--timeout", "2.5",
        "--max_retry_attempts", "4", "--retry_backoff_sec", "0.25", "--disable_paarc", "--C_init", "3",
        "--C_min", "1", "--C_max", "9", "--mu", "0.8", "--beta", "0.5", "--theta_50", "1.7", "--theta_95", "2.6",
        "--probe_rtt_period", "12", "--alpha_ema", "0.4", "--naming_mode", "url_based", "--create_tar",
        "--create_overview",
    )
    expected = {
        "input": "m.csv", "input_format": "csv", "output": "out", "output_format": "webdataset", "url": "photo",
        "label": "species", "concurrent_downloads": 17, "timeout": 2.5, "max_retry_attempts": 4,
        "retry_backoff_sec": 0.25, "enable_paarc": False, "C_init": 3, "C_min": 1, "C_max": 9, "mu": 0.8,
        "beta": 0.5, "theta_50": 1.7, "theta_95": 2.6, "probe_rtt_period": 12.0, "alpha_ema": 0.4,
        "naming_mode": "url_based", "create_tar": True, "create_overview": True,
    }
    got = dataclasses.asdict(cfg)
    assert {k: got[k] for k in expected} == expected
    assert parse("--input", "m", "--output", "o", "--enable_paarc").enable_paarc is True
    assert parse("--input", "m", "--output", "o", "--no_create_tar").create_tar is False


def test_cli_overrides_json_and_json_overrides_defaults(tmp_path: Path) -> None:
    """A JSON config sets values, a CLI option beats it, and untouched keys keep their defaults."""
    path = write_json(tmp_path, {
        "input": "files/m.parquet", "output": "files/out", "url": "photo_url", "label": "species",
        "concurrent_downloads": 1000, "timeout": 30, "enable_paarc": True, "C_init": 8, "C_min": 2, "C_max": 2000,
        "output_format": "imagefolder", "create_tar": True, "create_overview": True,
    })
    cfg = parse("--config", path, "--output_format", "webdataset", "--timeout", "3", "--disable_paarc")
    assert (cfg.output_format, cfg.timeout, cfg.enable_paarc) == ("webdataset", 3.0, False)
    assert (cfg.input, cfg.url, cfg.label, cfg.concurrent_downloads, cfg.C_max) == (
        "files/m.parquet", "photo_url", "species", 1000, 2000)
    assert cfg.mu == 1.0 and cfg.samples_per_shard == 10000


def test_json_aliases_and_loose_types(tmp_path: Path) -> None:
    """Seed aliases (url_col, label_col) work; JSON strings for bools and lists are understood."""
    cfg = build_config(DownloadConfig, write_json(tmp_path, {
        "input": "m", "output": "o", "url_col": "u", "label_col": "l", "create_tar": "false", "timeout": 4,
        "content_types": "image/,application/octet-stream", "C_init": 4.0,
    }), {})
    assert (cfg.url, cfg.label, cfg.create_tar, cfg.timeout, cfg.C_init) == ("u", "l", False, 4.0, 4)
    assert cfg.content_types == ["image/", "application/octet-stream"]
    assert build_config(DownloadConfig, None, {"input": "m", "output": "o", "content_types": []}).content_types == []


def test_json_null_leaves_an_optional_choice_unset(tmp_path: Path) -> None:
    """`"cloud_tool": null` means no upload tool, as leaving the key out does; a choice that may not
    be null still says so."""
    cfg = build_config(DownloadConfig, write_json(tmp_path, {"input": "m", "output": "o", "cloud_tool": None}), {})
    assert cfg.cloud_tool is None
    with pytest.raises(ConfigError, match="resize_mode may not be null"):
        build_config(DownloadConfig, write_json(tmp_path, {"input": "m", "output": "o", "resize_mode": None}), {})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"timeout": "abc"}, "timeout: expected a number"),
        ({"C_init": 2.5}, "C_init: expected an integer"),
        ({"enable_paarc": "maybe"}, "enable_paarc: expected true or false"),
        ({"storage_options": "key=x"}, "storage_options: expected a JSON object, got 'key=x'"),
        ({"concurrency": 5}, "unknown option 'concurrency'"),
        ({"C_min": 10, "C_max": 5}, "C_min <= C_init <= C_max"),
        ({"output_format": "zip"}, "output_format must be one of imagefolder, webdataset"),
        ({"timeout": 0}, "timeout must be > 0"),
        ({"beta": 1.5}, "beta must be in"),
        ({"url": None}, "url may not be null"),
        ({"samples_per_shard": 0}, "samples_per_shard must be >= 1"),
        ({"timeout": float("inf")}, "timeout must be a finite number, got inf"),
        ({"mu": float("nan")}, "mu must be a finite number, got nan"),
        ({"redact_params": 5}, "redact_params: expected a list of strings"),
        # Past what the machine could grant: 10**23 slots ran it out of memory.
        ({"concurrent_downloads": 10**23}, "concurrent_downloads must be <= 20,000, got 100,000,000,000,000,"),
        ({"batch_rows": 10**9}, "batch_rows must be <= 1,000,000"),
        ({"processes_count": 10_000}, "processes_count must be <= 256"),
        # A header holding a line break: every request refused it, each row failed as error:ValueError.
        ({"user_agent_token": "qa\r\nX-Evil: 1"}, "user_agent_token may not hold control characters"),
    ],
)
def test_bad_config_values_are_config_errors(tmp_path: Path, data: dict[str, Any], match: str) -> None:
    """Wrong types, unknown keys, bad choices and impossible ranges raise a one-line ConfigError."""
    path = write_json(tmp_path, {"input": "m", "output": "o", **data})
    with pytest.raises(ConfigError, match=match) as exc:
        build_config(DownloadConfig, path, {})
    assert "\n" not in str(exc.value)


def test_a_folder_given_for_the_config_is_named_as_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"is a folder; give the config file \(a \.json\) in it"):
        build_config(DownloadConfig, str(tmp_path), {})


@pytest.mark.parametrize(("content", "match"), [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"),
                                                (None, "not found")])
def test_unreadable_config_files(tmp_path: Path, content: str | None, match: str) -> None:
    """A config file that is missing, not JSON, or not an object is a ConfigError."""
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        build_config(DownloadConfig, str(path), {})


@pytest.mark.parametrize(
    "argv",
    [
        ["--output_format", "zip"],
        ["--timeout", "abc"],
        ["--concurrent_downloads", "many"],
        ["--storage_options", "{oops"],
        ["--no_such_option", "1"],
    ],
)
def test_cli_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Bad values on the command line exit 2 with one error line, not the whole usage text."""
    with pytest.raises(SystemExit) as exc:
        main(["download", "--input", "m.csv", "--output", "o", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and argv[0] in lines[0]


def test_config_errors_from_main_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main() turns a ConfigError into one stderr line and exit code 2."""
    rc = main(["download", "--input", str(tmp_path / "missing.parquet"), "--output", str(tmp_path / "o"),
               "--C_min", "9", "--C_max", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("flowdc: error: need 1 <= C_min")


def test_public_dict_hides_storage_secrets() -> None:
    """The config recorded in outputs keeps storage option names but never their values."""
    cfg = DownloadConfig(input="m", output="o", storage_options={"key": "AKIAXXXX", "secret": "hunter2"})
    shown = json.dumps(public_dict(cfg))
    assert "hunter2" not in shown and "AKIAXXXX" not in shown and "secret" in shown


def test_public_dict_redacts_urls() -> None:
    """URLs in the recorded config lose userinfo and secret parameter values (cloud_destination,
    output, input, list options alike), unless redaction is turned off."""
    cfg = DownloadConfig(input="https://u:pw1@h/m.parquet?sig=S2", output="o",
                         cloud_destination="https://carol:pw3@store.invalid/up?auth=A4&keep=1",
                         cloud_command=["curl", "-T", "{file}", "https://h/up?token=T5"])
    shown = json.dumps(public_dict(cfg))
    for secret in ("pw1", "S2", "pw3", "A4", "T5"):
        assert secret not in shown
    assert "keep=1" in shown and public_dict(cfg)["cloud_destination"] == "https://***@store.invalid/up?auth=***&keep=1"
    cfg.redact_urls = False
    assert public_dict(cfg)["cloud_destination"] == cfg.cloud_destination


def test_redaction_options_on_the_command_line() -> None:
    """Redaction is on by default; --no_redact_urls turns it off and --redact_params sets the names."""
    cfg = parse("--input", "m", "--output", "o")
    assert cfg.redact_urls is True and "x-amz-signature" in cfg.redact_params and "token" in cfg.redact_params
    assert parse("--input", "m", "--output", "o", "--no_redact_urls").redact_urls is False
    named = parse("--input", "m", "--output", "o", "--redact_params", "session,hmac")
    assert named.redact_params == ["session", "hmac"]
