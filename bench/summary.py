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
    probe = f", CPU probe {m['cpu_probe_ms']} ms" if "cpu_probe_ms" in m else ""
    return [f"*{r['finished_at']}, {m['cores']} cores, {m['cpu']}{probe}; reproduce with "
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
    # Recipes of one dataset share its references: each is listed once.
    references = {(e["dataset"], name): ref for e in r["recipes"] for name, ref in e["references"].items()}
    lines += [f"- {dataset}, {name}: {ref}" for (dataset, name), ref in references.items()]
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
    runs = r.get("repeats", 1)
    lines = _header(r) + [
        f"Config: {r['config']} on {r['dataset']}; median of {runs} alternating runs per side.", "",
        "| bare `model.fit` (s) | platform job, enqueue → succeeded (s) | ratio | target |",
        "|---|---|---|---|",
        f"| {r['bare_fit_seconds']:.1f} | {r['platform']['seconds']:.1f} | {r['ratio']:.3f} | "
        f"≤ {r['target_ratio']} ({'met' if r['met'] else 'not met'}) |"]
    if r.get("pair_ratios"):
        lines += ["", "Runs, bare / platform (s): " + ", ".join(
            f"{b:.1f} / {p['seconds']:.1f}" for b, p in zip(r["bare_fit_runs"], r["platform"]["runs"],
                                                          strict=True)) + "."]
    return lines


def _serving(r: dict) -> list[str]:
    api, batch, cam, t, met = r["api"], r["batch"], r["gradcam"], r["targets"], r["met"]

    def ok(key: str) -> str:
        return "met" if met[key] else "not met"

    def ms(stat: dict) -> str:
        return f"{stat['median']:.2f} / {stat['p90']:.2f} / {stat['p99']:.2f}"

    m = r["model"]
    lines = _header(r) + [
        f"Model: {m['architecture']} ({m['params']:,} parameters, 1 epoch, test ACC "
        f"{m['test_accuracy']:.3f}) on {r['dataset']} {'x'.join(map(str, m['input']))}. "
        f"Load average at start {r['load_average_at_start']}, at end {r['load_average_at_end']}.",
        "",
        f"Single-image `POST` ({api['server']}, {api['clients']} concurrent clients, "
        f"`gradcam=false`):", "",
        "| server | requests | errors | req/s | server ms median / p90 / p99 "
        "| client ms median / p90 / p99 |",
        "|---|---|---|---|---|---|"]
    for name, label in (("platform", "platform `/api/v1/predictions/`"),
                        ("bare", "bare DRF view: decode + predict")):
        s = api[name]
        lines.append(f"| {label} | {s['requests']} | {s['errors']} | {s['requests_per_s']:.1f} | "
                     f"{ms(s['server_ms'])} | {ms(s['latency_ms'])} |")
    g = api["platform_gradcam_true"]
    lines += ["", f"Platform with `gradcam=true` (1 client, {g['requests']} requests): server "
                  f"{ms(g['server_ms'])} ms.", "",
              f"Batch inference, batch {batch['batch_size']}, {batch['images']} test images "
              f"(median of {batch['repeats']}):", "",
              "| path | images/s | median s |", "|---|---|---|"]
    predictor = batch["predictor"]
    predictor_label = (f"predictor ({predictor.get('runtime', 'tensorflow')}, "
                       f"{predictor.get('intra_op_threads', 'all')} threads)")
    for key, label in (("predictor", predictor_label),
                       ("platform_job", "platform job on an uploaded .npz (read → results)"),
                       ("platform_job_with_create", "… including job creation (upload check)"),
                       ("platform_job_split", "platform job on the test split"),
                       ("platform_job_unlabelled", "platform job, .npz without labels (no report)"),
                       ("onnx_1_thread", "ONNX Runtime (1 thread)")):
        if key not in batch:
            continue
        lines.append(f"| {label} | {batch[key]['images_per_s']:,.0f} | "
                     f"{batch[key]['median_seconds']:.3f} |")
    single = batch["single_image_ms"]
    tf_single = single.get("tf_function", single.get("predictor"))
    ort_single = single.get("onnxruntime_1_thread", single.get("onnx"))
    lines += ["", f"One image in-process: `tf.function` {tf_single['median']:.2f} ms, "
                  f"ONNX Runtime {ort_single['median']:.2f} ms (median). Grad-CAM "
                  f"({cam['runs']} runs): heatmap {ms(cam['heatmap_ms'])} ms, with overlay PNG "
                  f"{ms(cam['heatmap_and_overlay_png_ms'])} ms (median / p90 / p99).", "",
              "| target | value | goal | |", "|---|---|---|---|",
              f"| API throughput, platform / bare | {r['values']['api_ratio']:.3f} | "
              f"≥ {t['api_ratio']} | {ok('api_ratio')} |",
              f"| platform server time, median | {r['values']['api_server_median_ms']:.2f} ms | "
              f"≤ {t['api_server_median_ms']} ms | {ok('api_server_median_ms')} |",
              f"| batch throughput, platform job (.npz without labels) / predictor "
              f"| {r['values']['batch_ratio']:.3f} | "
              f"≥ {t['batch_ratio']} | {ok('batch_ratio')} |",
              f"| Grad-CAM, one image, median | {r['values']['gradcam_median_ms']:.1f} ms | "
              f"≤ {t['gradcam_median_ms']} ms | {ok('gradcam_median_ms')} |"]
    with_report = r["ratios"].get("batch_throughput_with_report")
    if with_report:
        lines += ["", f"With labels the job also computes the evaluation report (bootstrap "
                      f"intervals included): platform job / predictor {with_report:.3f}."]
    reference = (batch["platform_job_unlabelled"]["images_per_s"]
                 / batch["onnx_reference_images_per_s"]) if "platform_job_unlabelled" in batch else None
    if reference:
        lines += ["", f"Platform job (.npz without labels) / the reference ONNX Runtime figure "
                      f"for a 60 MFLOP CNN "
                      f"({batch['onnx_reference_images_per_s']:,} images/s): {reference:.3f}."]
    return lines


RENDERERS = {"throughput": ("Training and inference throughput", _throughput),
             "cpu_recipe": ("CPU recipe (BloodMNIST)", _cpu_recipe),
             "accuracy": ("Accuracy over seeds (official test splits)", _accuracy),
             "report_models": ("The report's six models", _report_models),
             "overhead": ("Platform overhead", _overhead),
             "serving": ("Serving: prediction API, batch inference, Grad-CAM", _serving)}


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
