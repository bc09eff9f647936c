// Upload a dataset file to the REST API with a live progress bar, then open the new dataset.
(function () {
  "use strict";
  const form = document.getElementById("import-form");
  if (!form) return;
  const progress = document.getElementById("import-progress");
  const bar = progress.querySelector(".bar");
  const label = progress.querySelector(".label");
  const statusLine = document.getElementById("import-status");
  const errors = document.getElementById("import-errors");
  const button = document.getElementById("import-button");

  function setProgress(fraction, text) {
    const pct = Math.round(fraction * 100);
    bar.style.width = pct + "%";
    label.textContent = text || pct + "%";
  }

  function showErrors(payload) {
    errors.innerHTML = "";
    const add = (text) => { const li = document.createElement("li"); li.textContent = text; errors.appendChild(li); };
    if (payload && typeof payload === "object") {
      for (const [field, messages] of Object.entries(payload)) {
        for (const m of [].concat(messages)) add(field === "detail" || field === "non_field_errors" ? m : field + ": " + m);
      }
    } else {
      add(String(payload || "The import failed."));
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errors.innerHTML = "";
    const data = new FormData(form);
    for (const key of ["name", "description", "class_names", "image_size"]) {
      if (data.get(key) === "") data.delete(key);
    }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.endpoint);
    xhr.setRequestHeader("X-CSRFToken", data.get("csrfmiddlewaretoken"));
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", function (e) {
      if (e.lengthComputable) setProgress(e.loaded / e.total, "Uploading " + Math.round(100 * e.loaded / e.total) + "%");
    });
    xhr.upload.addEventListener("load", function () {
      setProgress(1, "Checking and importing…");
      statusLine.textContent = "Upload complete; validating the data on the server…";
    });
    xhr.addEventListener("load", function () {
      button.disabled = false;
      let payload = null;
      try { payload = JSON.parse(xhr.responseText); } catch (e) { payload = xhr.statusText; }
      if (xhr.status === 201) {
        statusLine.textContent = "Imported " + payload.name + ".";
        window.location.assign(payload.detail_url);
      } else {
        progress.hidden = true;
        statusLine.textContent = "Import failed (" + xhr.status + ").";
        showErrors(payload);
      }
    });
    xhr.addEventListener("error", function () {
      button.disabled = false;
      progress.hidden = true;
      statusLine.textContent = "The connection failed during the upload; nothing was imported.";
    });
    progress.hidden = false;
    setProgress(0);
    button.disabled = true;
    statusLine.textContent = "Uploading…";
    xhr.send(data);
  });
})();
