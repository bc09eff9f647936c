// Live view of a batch inference job: progress, class counts, evaluation, download links.
(function () {
  "use strict";
  const root = document.getElementById("inference-job");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const LABELS = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
  // What a running job is doing: reading the images fills the first half of the bar, classifying
  // them the second.
  const PHASES = {
    reading: (job) => "Reading images: " + job.read + " of " + job.total,
    predicting: (job) => "Classifying: " + job.done + " of " + job.total,
    writing: () => "Writing the results",
  };

  // Where a failed or cancelled job stopped (its phase is kept): its bar stays where it was.
  const STOPPED = {
    reading: (job) => "Stopped while reading images: " + job.read + " of " + job.total + " read",
    predicting: (job) => "Stopped while classifying: " + job.done + " of " + job.total + " classified",
    writing: () => "Stopped while writing the results",
  };

  function phaseText(job) {
    if (job.status === "queued") return "Waiting for a worker";
    const text = job.status === "running" ? PHASES[job.phase]
      : ["failed", "cancelled"].includes(job.status) ? STOPPED[job.phase] : null;
    return text ? text(job) : "";
  }

  function render(job) {
    $("inf-status").textContent = LABELS[job.status] || job.status;
    $("inf-status").className = "status status-" + job.status;
    $("inf-done").textContent = job.done;
    $("inf-total").textContent = job.total;
    const phase = phaseText(job);
    $("inf-phase").textContent = phase;
    $("inf-phase").hidden = !phase;
    const pct = Math.round(job.progress * 100);
    $("inf-progress").setAttribute("aria-valuenow", pct);
    $("inf-progress").classList.toggle("stopped", ["failed", "cancelled"].includes(job.status));
    document.querySelector("#inf-progress .bar").style.width = pct + "%";
    document.querySelector("#inf-progress .label").textContent = pct + "%";
    $("inf-error").textContent = job.error || "";
    $("inf-downloads").hidden = job.status !== "succeeded";
    $("inference-delete-button").textContent = ["queued", "running"].includes(job.status) ? "Stop and delete" : "Delete job and files";
    const body = document.querySelector("#inf-summary tbody");
    body.innerHTML = "";
    // Most frequent class first (the stored summary's key order depends on the database).
    const summary = Object.entries(job.summary || {})
      .sort(([n1, c1], [n2, c2]) => c2 - c1 || n1.localeCompare(n2));
    const counted = summary.reduce((sum, [, count]) => sum + count, 0);
    for (const [name, count] of summary) {
      const tr = document.createElement("tr");
      const a = document.createElement("td"); a.textContent = name;
      const b = document.createElement("td"); b.textContent = count; b.className = "num";
      const c = document.createElement("td"); c.className = "num";
      c.textContent = counted ? (100 * count / counted).toFixed(1) + "%" : "—";
      tr.append(a, b, c); body.appendChild(tr);
    }
    if (!summary.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 3; td.className = "empty";
      td.textContent = ["queued", "running"].includes(job.status) ? "No predictions yet." : "No predictions.";
      tr.appendChild(td); body.appendChild(tr);
    }
    const report = job.report || {};
    if (report.accuracy !== undefined) {
      $("inf-report-card").hidden = false;
      const dl = $("inf-report");
      dl.innerHTML = "";
      const rows = [["accuracy", report.accuracy], ["balanced accuracy", report.balanced_accuracy], ["AUC", report.roc_auc], ["n", report.n]];
      for (const [k, v] of rows) {
        const dt = document.createElement("dt"); dt.textContent = k;
        const dd = document.createElement("dd"); dd.textContent = typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(4)) : "—";
        dl.append(dt, dd);
      }
    }
  }

  // Said on the page rather than retried in silence: a job deleted elsewhere (404) is not
  // coming back, and a page that lost the server shows figures that are no longer live.
  function poll() {
    const connection = $("inf-connection");
    fetch(root.dataset.url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then((job) => {
        connection.textContent = "";
        render(job);
        if (["queued", "running"].includes(job.status)) setTimeout(poll, 1000);
      })
      .catch((status) => {
        if (status === 404) {
          connection.textContent = "This job no longer exists: it was deleted. Its figures above are the last ones seen.";
          $("inf-phase").hidden = true;
          $("inf-downloads").hidden = true;
          $("inference-delete-form").hidden = true;
          return;
        }
        if (status === 401 || status === 403) {
          connection.textContent = "You are no longer signed in: reload the page and sign in to follow this job.";
          return;
        }
        connection.textContent = (typeof status === "number" ? "The server answered " + status : "The connection to the server was lost")
          + "; the figures above may be out of date. Trying again…";
        setTimeout(poll, 3000);
      });
  }
  poll();
})();
