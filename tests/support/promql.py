"""The PromQL satmon ships, read from ``deploy/``: every rule's and dashboard target's expression
(:func:`expressions`), Grafana's variables expanded (:func:`grafana_expand`), and the metric names an
expression reads (:func:`metric_names`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
# Grafana's variables, as Grafana would expand them with a 1 s scrape interval.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def expressions() -> list[tuple[str, str]]:
    """``(name, PromQL)`` for every rule, dashboard panel target and annotation we ship."""
    out = []
    for f in RULE_FILES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((rule.get("alert") or rule["record"], rule["expr"]))
    for f in DASHBOARDS:
        doc = json.loads(f.read_text())
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                out.append((panel["title"], target["expr"]))
        for ann in doc.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                out.append((ann["name"], ann["expr"]))
    return out


def grafana_expand(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unexpanded Grafana variable in {expr!r}"
    return expr


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "le"}


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded series) names an expression reads: identifiers outside strings, label
    matchers and grouping clauses that are not function calls or keywords."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                                   # strings
    e = re.sub(r"\{[^}]*\}", " ", e)                                             # label matchers
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)                                            # ranges
    e = re.sub(r"\boffset\s+[0-9smhdwy]+", " ", e)                                # offsets
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        rest = e[m.end():].lstrip()
        if tok in _KEYWORDS or rest.startswith("(") or re.fullmatch(r"\d+[smhdwy]", tok):
            continue
        names.add(tok)
    return names
