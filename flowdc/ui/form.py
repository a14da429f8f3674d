"""The configuration form's model, generated from the config dataclasses (no NiceGUI here).

Each field of DownloadConfig (and of the other run configs) becomes one form field with the help,
choices and default the CLI uses. What the form gives back goes through `build_config`, the CLI's
own parse-and-check, so the page accepts exactly what `flowdc download --config` accepts.

Secrets never travel to the browser: storage option values under secret-looking keys, and in
URL-valued options the userinfo (proxy credentials) and secret query parameters (signed URLs), are
masked in what the page shows; the real values stay on the server (`Secrets`) to be put back when
the form is used.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowdc.config import build_config, read_json_config
from flowdc.errors import ConfigError
from flowdc.urls import MASK, redact_url  # the one URL redaction: userinfo and secret query parameters

SECRET_KEY = re.compile(r"key|secret|token|passw|credential|session|auth|private", re.IGNORECASE)
# The options a person sets first; the rest sit under "more options" and PAARC's knobs under "PAARC".
ESSENTIALS = ("input", "output", "url", "label", "output_format", "naming_mode", "concurrent_downloads",
              "manifest", "workers", "engine")


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # bool | int | float | str | list | dict
    default: Any
    help: str
    choices: tuple[str, ...]
    optional: bool  # the type allows None
    group: str  # essentials | paarc | more

    def to_text(self, value: Any) -> Any:
        """The value as the form widget holds it (switches hold bools, the rest text)."""
        if self.kind == "bool":
            return bool(value)
        if value is None:
            return None if self.choices else ""
        if self.kind == "list":
            return ", ".join(str(v) for v in value)
        if self.kind == "dict":
            return json.dumps(value, ensure_ascii=False) if value else ""
        return value if self.choices else str(value)


def form_fields(cls: type) -> list[FormField]:
    from flowdc.config import PaarcOptions

    paarc = {f.name for f in dataclasses.fields(PaarcOptions)}
    out = []
    for f in dataclasses.fields(cls):
        kind = str(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        group = "essentials" if f.name in ESSENTIALS else "paarc" if f.name in paarc else "more"
        out.append(FormField(f.name, kind.split(" ")[0].split("[")[0], default, f.metadata.get("help", ""),
                             tuple(f.metadata.get("choices", ())), "None" in kind, group))
    return out


def form_values(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Field name -> widget value for every field: the given values over the defaults."""
    return {f.name: f.to_text(values.get(f.name, f.default)) for f in form_fields(cls)}


def overrides_from_form(cls: type, shown: dict[str, Any]) -> dict[str, Any]:
    """Widget values -> the overrides build_config takes; blank text means "the default"."""
    out: dict[str, Any] = {}
    for f in form_fields(cls):
        value = shown.get(f.name)
        if isinstance(value, str):
            value = value.strip()
            if value == "":
                if f.kind in ("list", "dict") and f.default:
                    out[f.name] = [] if f.kind == "list" else {}
                continue
            if f.kind == "list":
                value = [v.strip() for v in value.split(",") if v.strip()]
            elif f.kind == "dict":
                try:
                    value = json.loads(value)
                except ValueError:
                    raise ConfigError(f"{f.name}: not a JSON object: {value[:60]}") from None
        if value is not None:
            out[f.name] = value
    return out


class Secrets:
    """The real values behind MASK for one form; they never leave the server."""

    def __init__(self) -> None:
        self._kept: dict[str, Any] = {}

    def mask(self, values: dict[str, Any]) -> dict[str, Any]:
        """A copy of the config values that may be shown; remembers what it hid."""
        self._kept = {}
        shown = {}
        for name, value in values.items():
            if isinstance(value, dict):
                hidden = {}
                for k, v in value.items():
                    if SECRET_KEY.search(str(k)) and v not in (None, "", MASK):
                        self._kept[f"{name}.{k}"] = v
                        v = MASK
                    hidden[k] = v
                shown[name] = hidden
            elif isinstance(value, str) and (masked := redact_url(value)) != value:
                self._kept[name] = (masked, value)
                shown[name] = masked
            else:
                shown[name] = value
        return shown

    def unmask(self, values: dict[str, Any]) -> dict[str, Any]:
        """Put the kept secrets back where the form still shows MASK (or the masked URL)."""
        out = {}
        for name, value in values.items():
            if isinstance(value, dict):
                value = {k: self._kept.get(f"{name}.{k}", v) if v == MASK else v for k, v in value.items()}
            elif isinstance(value, str) and name in self._kept and value == self._kept[name][0]:
                value = self._kept[name][1]
            out[name] = value
        return out


class ConfigForm:
    """One run kind's form state on the server: what is shown, plus the secrets behind it."""

    def __init__(self, cls: type):
        self.cls = cls
        self.fields = form_fields(cls)
        self.secrets = Secrets()
        self.shown: dict[str, Any] = form_values(cls, {})

    def load(self, path: str) -> list[str]:
        """Fill the form from a config JSON file (aliases resolved); returns the keys it ignored."""
        data = read_json_config(path)
        names = {f.name: f.name for f in dataclasses.fields(self.cls)}
        for f in dataclasses.fields(self.cls):
            for alias in f.metadata.get("aliases", ()):
                names.setdefault(alias, f.name)
        known = {names[k]: v for k, v in data.items() if k in names}
        self.shown = form_values(self.cls, self.secrets.mask(known))
        return sorted(k for k in data if k not in names)

    def real_overrides(self, shown: dict[str, Any] | None = None) -> dict[str, Any]:
        if shown is not None:
            self.shown = dict(shown)
        return self.secrets.unmask(overrides_from_form(self.cls, self.shown))

    def build(self, shown: dict[str, Any] | None = None) -> Any:
        """The checked config, by the CLI's own code; raises ConfigError with the CLI's message."""
        real = self.real_overrides(shown)
        cfg = build_config(self.cls, None, real)
        self.shown = form_values(self.cls, self.secrets.mask(real))  # a secret just typed is not shown again
        return cfg

    def save(self, path: str, shown: dict[str, Any] | None = None) -> Path:
        """Write what differs from the defaults (secrets included: it is the user's own file)."""
        cfg = self.build(shown)
        defaults = self.cls()
        data = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(self.cls)
                if getattr(cfg, f.name) != getattr(defaults, f.name)}
        p = Path(path).expanduser()
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
        return p
