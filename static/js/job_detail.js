// Live view of a training job: polls the API and redraws progress, curves, table and log.
(function () {
  "use strict";
  const root = document.getElementById("job");
  if (!root) return;
  const url = root.dataset.url;
  const $ = (id) => document.getElementById(id);
  const ACTIVE = ["queued", "running"];
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };

  // A chart of some keys of the history: one coloured series each, labelled inside the chart.
  function drawChart(svg, history, keys) {
    const series = keys.map((k) => ({ runs: MedCharts.runs(history, k.key), colour: k.color, attrs: { class: "series-" + k.key } }));
    if (!MedCharts.draw(svg, series, "waiting for the first epoch…")) return;
    const { left, top } = MedCharts.margin;
    keys.forEach((k, i) => {
      if (series[i].runs.length) svg.appendChild(MedCharts.el("text", { x: left + 8 + i * 110, y: top + 12, "font-size": 12, fill: k.color }, k.label));
    });
  }

  function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "—"; }

  function render(job) {
    const active = ACTIVE.includes(job.status);
    const cancelling = active && job.cancel_requested;
    const status = $("job-status");
    status.textContent = cancelling ? "Cancelling…" : LABELS[job.status] || job.status;
    status.className = "status status-" + job.status;
    $("job-epoch").textContent = job.current_epoch;
    $("job-total").textContent = job.total_epochs;
    // Member m of an ensemble owns the epochs (m-1)*epochs+1 to m*epochs; the job's epoch counts
    // those done, or left unused by a member that stopped early.
    const size = (job.config || {}).ensemble_size || 1;
    if (size > 1) {
      const member = Math.min(size, Math.floor(job.current_epoch / job.config.epochs) + 1);
      $("job-member").textContent = " · member " + member + " of " + size;
    }
    $("job-device").textContent = job.device || "—";
    $("job-worker").textContent = job.worker_host || "—";
    const pct = Math.round(job.progress * 100);
    $("job-progress").setAttribute("aria-valuenow", pct);
    document.querySelector("#job-progress .bar").style.width = pct + "%";
    document.querySelector("#job-progress .label").textContent = pct + "%";
    $("job-error").textContent = job.error || "";
    $("cancel-form").hidden = !active || cancelling;
    $("delete-form").hidden = active;  // only finished jobs can be deleted
    const retry = $("retry-form");  // absent once the job was retried
    if (retry) retry.hidden = job.retried_as != null || !["failed", "cancelled"].includes(job.status);
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

  // Polls while the job is queued or running: every second, less often after errors, not while
  // the tab is hidden, and no more once the job has finished or the server answers what asking
  // again cannot change (signed out, no such job).
  let delay = 1000;
  function later(ms) {
    setTimeout(() => {
      if (document.hidden) document.addEventListener("visibilitychange", poll, { once: true });
      else poll();
    }, ms);
  }
  function poll() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((job) => {
        render(job);
        delay = 1000;
        if (ACTIVE.includes(job.status)) later(delay);
      })
      .catch((status) => {
        if (status >= 400 && status < 500 && status !== 408 && status !== 429) {
          const note = $("job-updates");
          note.textContent = "Live updates stopped (the server answered " + status + "): reload the page.";
          note.hidden = false;
          return;
        }
        delay = Math.min(delay * 2, 15000);
        later(delay);
      });
  }
  poll();
})();
