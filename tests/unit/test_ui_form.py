"""The configuration form: generated from the config dataclasses, checked by the CLI's own code,
and never showing a secret."""

from __future__ import annotations

import dataclasses
import json

import pytest

from flowdc.config import DownloadConfig
from flowdc.errors import ConfigError
from flowdc.ui.form import MASK, ConfigForm, form_fields


def test_every_download_option_is_a_form_field_with_the_cli_help_and_choices():
    fields = {f.name: f for f in form_fields(DownloadConfig)}
    assert set(fields) == {f.name for f in dataclasses.fields(DownloadConfig)}
    assert fields["output_format"].choices == ("imagefolder", "webdataset")
    assert fields["cloud_tool"].optional and fields["C_init"].group == "paarc"
    assert "Global bound" in fields["concurrent_downloads"].help


def test_the_form_is_checked_by_build_config_with_the_cli_messages():
    form = ConfigForm(DownloadConfig)
    shown = dict(form.shown, input="m.parquet", output="out", concurrent_downloads="0")
    with pytest.raises(ConfigError, match="concurrent_downloads must be >= 1, got 0"):
        form.build(shown)
    with pytest.raises(ConfigError, match="C_init: expected an integer, got 'many'"):
        form.build(dict(shown, concurrent_downloads="10", C_init="many"))
    cfg = form.build(dict(shown, concurrent_downloads="10", content_types="image/, application/octet-stream",
                          storage_options='{"anon": true}', label=""))
    assert (cfg.concurrent_downloads, cfg.label) == (10, None)
    assert cfg.content_types == ["image/", "application/octet-stream"] and cfg.storage_options == {"anon": True}


def test_secrets_are_masked_in_what_is_shown_and_kept_for_the_run_and_the_saved_file(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({
        "input": "m.parquet", "output": "s3://bkt/out", "url_col": "photo",
        "storage_options": {"key": "AKIAEXAMPLE", "secret": "s3cr3t-value", "endpoint_url": "http://127.0.0.1:9"},
        "bogus": 1}))
    form = ConfigForm(DownloadConfig)
    assert form.load(str(path)) == ["bogus"]
    shown_text = json.dumps(form.shown, ensure_ascii=False)
    assert "AKIAEXAMPLE" not in shown_text and "s3cr3t-value" not in shown_text
    assert MASK in shown_text and "127.0.0.1:9" in shown_text and form.shown["url"] == "photo"
    cfg = form.build(form.shown)  # the run gets the real values
    assert cfg.storage_options["secret"] == "s3cr3t-value"
    assert "s3cr3t-value" not in json.dumps(form.shown)  # and the form still shows none
    saved = json.loads(form.save(str(tmp_path / "again.json"), form.shown).read_text())
    assert saved["storage_options"]["key"] == "AKIAEXAMPLE" and saved["url"] == "photo"


def test_a_secret_typed_into_the_form_is_not_shown_back():
    form = ConfigForm(DownloadConfig)
    form.build(dict(form.shown, input="m.parquet", output="out", storage_options='{"token": "typed-secret"}'))
    assert "typed-secret" not in json.dumps(form.shown)


def test_urls_with_credentials_are_masked_and_kept(tmp_path):
    form = ConfigForm(DownloadConfig)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"input": "https://data.example/m.parquet?X-Amz-Signature=abc123def",
                                "output": "out", "cloud_destination": "http://bob:hunter2@store.example/x"}))
    form.load(str(path))
    shown = json.dumps(form.shown)
    assert "abc123def" not in shown and "hunter2" not in shown and "data.example/m.parquet" in shown
    cfg = form.build(form.shown)
    assert cfg.input.endswith("X-Amz-Signature=abc123def") and "hunter2" in cfg.cloud_destination
