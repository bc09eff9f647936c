"""Rebuild bench/results/SUMMARY.md from the JSON results."""

from __future__ import annotations

import json

from bench.common import RESULTS


def _fmt(stat: dict | None, digits: int = 4) -> str:
    if not stat:
        return "—"
    if stat.get("n", 1) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f} (n={stat['n']})"
    return f"{stat['mean']:.{digits}f}"


def _header(r: dict) -> list[str]:
    m = r["machine"]
    return [f"*{r['finished_at']}, {m['cores']} cores, {m['cpu']}; reproduce with "
            f"`{r['command']}`*", ""]


def _throughput(r: dict) -> list[str]:
    lines = _header(r) + [f"Device: {r['device']}", "",
                          "| architecture | input | classes | params | train img/s | inference img/s |",
                          "|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['architecture']} | {row['input']} | {row['classes']} | "
                     f"{row['params']:,} | {row['train_images_per_s']:,} | "
                     f"{row['inference_images_per_s']:,} |")
    return lines


def _recipe_rows(title: str, entries: list[dict]) -> list[str]:
    lines = [f"| {title} | dataset | test ACC | test AUC | val ACC | macro F1 | train s |",
             "|---|---|---|---|---|---|---|"]
    for e in entries:
        s = e["summary"]
        lines.append(f"| {e['preset']} | {e['dataset']} | {_fmt(s.get('test_accuracy'))} | "
                     f"{_fmt(s.get('test_auc'))} | {_fmt(s.get('val_accuracy'))} | "
                     f"{_fmt(s.get('test_macro_f1'))} | {_fmt(s.get('train_seconds'), 0)} |")
    return lines


def _accuracy(r: dict) -> list[str]:
    lines = _header(r) + _recipe_rows("recipe", r["recipes"]) + ["", "References:", ""]
    for e in r["recipes"]:
        for name, ref in e["references"].items():
            lines.append(f"- {e['dataset']}, {name}: {ref}")
    return lines


def _cpu_recipe(r: dict) -> list[str]:
    entry = {"preset": "fast_cpu_blood", "dataset": "bloodmnist", "summary": r["summary"]}
    return _header(r) + _recipe_rows("recipe", [entry]) + [
        "", f"Target: test ACC ≥ {r['target']['test_accuracy']} within "
            f"{r['target']['train_seconds']} s of training. Met: **{r['met']}**."]


def _report_models(r: dict) -> list[str]:
    lines = _header(r) + [
        "| preset | dataset | epochs here | train images | test ACC | report ACC | majority rate "
        "| ≥ report | > majority |",
        "|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['preset']} | {row['dataset']} | {row['epochs']} | "
                     f"{row.get('train_images', '—')} | "
                     f"{_fmt(row['summary'].get('test_accuracy'))} | {row['report_accuracy']} | "
                     f"{row['majority_rate']} | {row['at_least_report']} | {row['above_majority']} |")
    return lines


def _overhead(r: dict) -> list[str]:
    return _header(r) + [
        f"Config: {r['config']} on {r['dataset']}.", "",
        "| bare `model.fit` (s) | platform job, enqueue → succeeded (s) | ratio | target |",
        "|---|---|---|---|",
        f"| {r['bare_fit_seconds']:.1f} | {r['platform']['seconds']:.1f} | {r['ratio']:.3f} | "
        f"≤ {r['target_ratio']} ({'met' if r['met'] else 'not met'}) |"]


RENDERERS = {"throughput": ("Training and inference throughput", _throughput),
             "cpu_recipe": ("CPU recipe (BloodMNIST)", _cpu_recipe),
             "accuracy": ("Accuracy over seeds (official test splits)", _accuracy),
             "report_models": ("The report's six models", _report_models),
             "overhead": ("Platform overhead", _overhead)}


def write() -> None:
    lines = ["# Benchmark results", "",
             "Written by `make bench` (see bench/README.md). Models and epochs are chosen on the "
             "validation split; test figures are measured once per run.", ""]
    for name, (title, render) in RENDERERS.items():
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        lines += [f"## {title}", "", *render(result), ""]
        if result.get("quick"):
            lines.insert(len(lines) - 1, "(quick smoke run: not a real measurement)")
    (RESULTS / "SUMMARY.md").write_text("\n".join(lines) + "\n")
