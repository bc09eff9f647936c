// Live view of a training job: polls the API and redraws progress, curves, table and log.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const url = root.dataset.url;
  const $ = (id) => document.getElementById(id);
  const ACTIVE = ["queued", "running"];
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
  const SVG = "http://www.w3.org/2000/svg";

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A small line chart: one polyline per series, axes with min/max labels.
  function drawChart(svg, history, series) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const W = 600, H = 240, L = 44, R = 10, T = 10, B = 26;
    const points = series.map((s) => history.map((h) => [h.epoch, h[s.key]]).filter((p) => typeof p[1] === "number" && isFinite(p[1])));
    const all = points.flat();
    if (!all.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6b7e" }, "waiting for the first epoch…"));
      return;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const x0 = Math.min(1, ...xs), x1 = Math.max(...xs, x0 + 1);
    let y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (y1 - y0 < 1e-9) { y0 -= 0.5; y1 += 0.5; }
    const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    svg.appendChild(el("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#c5ced9" }));
    svg.appendChild(el("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#c5ced9" }));
    svg.appendChild(el("text", { x: 4, y: T + 10, "font-size": 11, fill: "#5d6b7e" }, y1.toFixed(3)));
    svg.appendChild(el("text", { x: 4, y: H - B, "font-size": 11, fill: "#5d6b7e" }, y0.toFixed(3)));
    svg.appendChild(el("text", { x: W - R, y: H - 6, "font-size": 11, fill: "#5d6b7e", "text-anchor": "end" }, "epoch " + x1));
    series.forEach((s, i) => {
      const pts = points[i];
      if (!pts.length) return;
      // An ensemble's members are separate runs: one line each, not joined across members.
      for (const run of segments(history, pts)) {
        svg.appendChild(el("polyline", { points: run.map((p) => sx(p[0]) + "," + sy(p[1])).join(" "), fill: "none", stroke: s.color, "stroke-width": 2, class: "series-" + s.key }));
      }
      pts.forEach((p) => svg.appendChild(el("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color })));
      svg.appendChild(el("text", { x: L + 8 + i * 110, y: T + 12, "font-size": 12, fill: s.color }, s.label));
    });
  }

  function segments(history, pts) {
    const memberOf = new Map(history.map((h) => [h.epoch, h.member]));
    const runs = [];
    for (const p of pts) {
      const last = runs[runs.length - 1];
      if (last && memberOf.get(last[last.length - 1][0]) === memberOf.get(p[0])) last.push(p);
      else runs.push([p]);
    }
    return runs;
  }

  function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "—"; }

  function render(job) {
    const status = $("job-status");
    status.textContent = LABELS[job.status] || job.status;
    status.className = "status status-" + job.status;
    $("job-epoch").textContent = job.current_epoch;
    $("job-total").textContent = job.total_epochs;
    const size = (job.config || {}).ensemble_size || 1;
    if (size > 1) {
      const epochs = job.config.epochs;
      const member = Math.min(size, Math.floor(Math.max(job.current_epoch - 1, 0) / epochs) + 1);
      $("job-member").textContent = " · member " + member + " of " + size;
    }
    $("job-device").textContent = job.device || "—";
    $("job-worker").textContent = job.worker_host || "—";
    const pct = Math.round(job.progress * 100);
    const bar = document.querySelector("#job-progress .bar");
    bar.style.width = pct + "%";
    document.querySelector("#job-progress .label").textContent = pct + "%";
    $("job-error").textContent = job.error || "";
    $("cancel-form").hidden = !ACTIVE.includes(job.status);
    $("retry-form").hidden = !["failed", "cancelled"].includes(job.status);
    // The page renders the model's name and test accuracy; keep them when it already has.
    if (job.model_version && !$("job-model").textContent.trim()) {
      $("job-model").textContent = "Model registered (id " + job.model_version + ").";
    }
    const hist = job.history || [];
    drawChart($("chart-loss"), hist, [{ key: "loss", label: "train", color: "#1f6feb" }, { key: "val_loss", label: "validation", color: "#cf222e" }]);
    drawChart($("chart-acc"), hist, [{ key: "accuracy", label: "train", color: "#1f6feb" }, { key: "val_accuracy", label: "validation", color: "#cf222e" }, { key: "val_auc", label: "val AUC", color: "#1a7f37" }]);
    const body = document.querySelector("#history-table tbody");
    body.innerHTML = "";
    for (const h of hist) {
      const tr = document.createElement("tr");
      const epoch = h.member ? h.epoch + " (member " + h.member + ")" : String(h.epoch);
      for (const v of [epoch, fmt(h.loss, 4), fmt(h.accuracy, 4), fmt(h.val_loss, 4), fmt(h.val_accuracy, 4), fmt(h.val_auc, 4), fmt(h.lr, 6), fmt(h.seconds, 1)]) {
        const td = document.createElement("td");
        td.textContent = v;
        if (td.textContent !== epoch) td.className = "num";
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    const log = $("job-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = (job.log || []).join("\n");
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  let delay = 1000;
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((job) => {
        render(job);
        delay = 1000;
        if (ACTIVE.includes(job.status)) setTimeout(poll, delay);
      })
      .catch(() => { delay = Math.min(delay * 2, 15000); setTimeout(poll, delay); });
  }
  poll();
})();
