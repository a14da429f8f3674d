"""The partitions a distribute run covers, read from what `flowdc partition` wrote.

Input: a plan.json, a folder holding one, or a plain folder of manifests (then part-NNNNN in a
file name gives its number, else its position). A host split over partitions gets, in each, its
budget_share from the plan's complete host table (`_plan/host_shares.parquet`), or else from
plan.json's `split_hosts`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from flowdc.errors import ConfigError

PART_NUMBER = re.compile(r"part-(\d+)")


@dataclass
class Partition:
    number: int
    path: str
    rows: int | None = None  # None when there is no plan to say
    host_budget: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"part-{self.number:05d}"


def load_partitions(source: str) -> list[Partition]:
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "plan.json")):
        source = os.path.join(source, "plan.json")
    if os.path.isfile(source) and source.endswith(".json"):
        parts = _from_plan(source)
    elif os.path.isdir(source):
        parts = _from_folder(source)
    elif os.path.isfile(source):  # a manifest: distribute runs partitions of one
        raise ConfigError(f"{source} is a file, not partitions: split it first (flowdc partition --input {source} "
                          "--output_folder PARTS --groups N), then give PARTS or its plan.json")
    else:
        raise ConfigError(f"partitions not found: {source} (give the folder or plan.json that `flowdc partition` "
                          "wrote)")
    if not parts:
        raise ConfigError(f"no partitions in {source}")
    numbers = [p.number for p in parts]
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"{source}: two partitions share a number")
    return sorted(parts, key=lambda p: p.number)


def _from_plan(path: str) -> list[Partition]:
    try:
        with open(path, encoding="utf-8") as fh:
            plan = json.load(fh)
        entries = plan["partitions"]
        folder = os.path.dirname(os.path.abspath(path))
        parts = [Partition(int(e["partition"]), os.path.join(folder, str(e["file"])), int(e["rows"]))
                 for e in entries]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"cannot read the partition plan {path}: {type(exc).__name__}: {exc}") from None
    for part in parts:
        if not os.path.isfile(part.path):
            raise ConfigError(f"{path} lists {part.path}, which does not exist")
    shares = _host_shares(folder, plan)
    for part in parts:
        part.host_budget = shares.get(part.number, {})
    return parts


def _host_shares(folder: str, plan: dict[str, Any]) -> dict[int, dict[str, float]]:
    """partition -> {host: budget_share} for every host split over partitions."""
    out: dict[int, dict[str, float]] = {}
    table = os.path.join(folder, str(plan.get("host_shares_file") or "_plan/host_shares.parquet"))
    if os.path.isfile(table):
        import pyarrow.parquet as pq

        for r in pq.read_table(table, columns=["host", "partition", "budget_share"]).to_pylist():
            out.setdefault(int(r["partition"]), {})[str(r["host"])] = float(r["budget_share"])
        return out
    for host, split in (plan.get("split_hosts") or {}).items():
        for entry in split.get("partitions", []):
            out.setdefault(int(entry["partition"]), {})[host] = float(entry["budget_share"])
    return out


def _from_folder(folder: str) -> list[Partition]:
    from flowdc.manifest import is_manifest_name  # late: it loads Arrow, which a plan.json needs not

    names = sorted(n for n in os.listdir(folder) if is_manifest_name(n) and not n.startswith((".", "_")))
    parts = []
    for i, name in enumerate(names):
        m = PART_NUMBER.search(name)
        parts.append(Partition(int(m.group(1)) if m else i, os.path.join(os.path.abspath(folder), name)))
    return parts
