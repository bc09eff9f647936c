// Classify dropped or chosen images through the REST API and show each result on the page:
// predicted class, a probability bar per class, the model used, the Grad-CAM overlay, warnings.
(function () {
  "use strict";
  const form = document.getElementById("classify-form");
  if (!form) return;
  const input = document.getElementById("id_images");
  const dropZone = document.getElementById("drop-zone");
  const fileList = document.getElementById("selected-files");
  const select = document.getElementById("id_model");
  const tta = document.getElementById("id_tta");
  const button = document.getElementById("predict-button");
  const statusLine = document.getElementById("classify-status");
  const errors = document.getElementById("classify-errors");
  const results = document.getElementById("results");
  const maxFiles = parseInt(form.dataset.maxFiles, 10) || 16;
  const maxBytes = parseInt(form.dataset.maxBytes, 10) || 0;
  let selected = [];
  let previewUrls = [];
  let shownUrls = [];  // previews the results on the page still use

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function percent(p) {
    return (100 * p).toFixed(1) + "%";
  }

  function countImages(n) {
    return n === 1 ? "1 image" : n + " images";
  }

  function size(bytes) {
    if (bytes < 1024) return bytes + " bytes";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  // An image the browser cannot show (TIFF, in most browsers) gets a note, not a broken icon.
  function preview(src, attrs) {
    const image = el("img", Object.assign({ src: src }, attrs));
    image.addEventListener("error", () => {
      image.replaceWith(el("span", { class: "no-preview", text: "no preview" }));
    }, { once: true });
    return image;
  }

  function tooLargeFiles() {
    return selected.filter((file) => maxBytes && file.size > maxBytes);
  }

  function tooLargeMessages(files) {
    return { images: files.map((file) => file.name + ": the file is " + size(file.size) + "; the limit is " + size(maxBytes) + " per image") };
  }

  // A new choice replaces the outcome of the previous one: its errors no longer apply. Files that
  // cannot be sent are said at once, not only once Predict is pressed.
  function setFiles(files) {
    previewUrls.filter((url) => !shownUrls.includes(url)).forEach((url) => URL.revokeObjectURL(url));
    selected = Array.from(files);
    previewUrls = selected.map((file) => URL.createObjectURL(file));
    fileList.innerHTML = "";
    errors.innerHTML = "";
    selected.forEach((file, i) => {
      fileList.appendChild(el("li", {}, [preview(previewUrls[i], { alt: "" }), el("span", { text: file.name })]));
    });
    const tooLarge = tooLargeFiles();
    if (selected.length > maxFiles) {
      statusLine.textContent = selected.length + " images chosen; choose at most " + maxFiles + ".";
      showErrors("At most " + maxFiles + " images can be classified at once.");
    } else if (tooLarge.length) {
      statusLine.textContent = (tooLarge.length === 1 ? "1 image is" : tooLarge.length + " images are") + " too large to send; choose smaller ones.";
      showErrors(tooLargeMessages(tooLarge));
    } else {
      statusLine.textContent = selected.length ? countImages(selected.length) + " ready." : "";
    }
  }

  function showErrors(payload) {
    errors.innerHTML = "";
    const add = (text) => errors.appendChild(el("li", { text: text }));
    if (payload && typeof payload === "object") {
      for (const [field, messages] of Object.entries(payload)) {
        for (const m of [].concat(messages)) add(field === "detail" || field === "non_field_errors" || field === "images" ? m : field + ": " + m);
      }
    } else {
      add(String(payload || "The request failed."));
    }
  }

  function renderResult(prediction, previewUrl) {
    const classNames = prediction.model.class_names;
    const top = prediction.probabilities[prediction.predicted_label];
    const rows = classNames.map((name) => {
      const p = prediction.probabilities[name];
      const fill = el("div");
      fill.style.width = (100 * p).toFixed(1) + "%";
      return el("tr", { class: name === prediction.predicted_label ? "top" : "", "data-class": name }, [
        el("th", { text: name }),
        el("td", {}, [el("div", { class: "hbar" }, [fill])]),
        el("td", { class: "num probability", text: percent(p) }),
      ]);
    });
    const images = el("div", { class: "result-images" }, [
      el("figure", {}, [preview(previewUrl || prediction.image_url, { class: "upload", alt: "uploaded image" }), el("figcaption", { text: "Upload" })]),
      prediction.gradcam ? el("figure", {}, [
        el("img", { class: "gradcam", src: prediction.gradcam, alt: "Grad-CAM heatmap for " + prediction.predicted_label }),
        el("figcaption", { text: "Grad-CAM: " + prediction.predicted_label }),
      ]) : null,
    ]);
    const model = prediction.model;
    const details = [
      prediction.original_name,
      model.name + " v" + model.version + " (" + model.architecture + ", " + model.dataset_name + ")",
      prediction.latency_ms.toFixed(1) + " ms",
    ];
    if (prediction.uncertainty !== null) details.push("TTA spread ±" + percent(prediction.uncertainty));
    const body = el("div", { class: "result-body" }, [
      el("h2", { class: "predicted" }, [
        el("span", { class: "predicted-label", text: prediction.predicted_label }),
        document.createTextNode(" "),
        el("span", { class: "confidence", text: percent(top) }),
      ]),
      el("p", { class: "muted model-used", text: details.join(" · ") }),
      el("table", { class: "table probabilities" }, [el("tbody", {}, rows)]),
      prediction.warnings.length ? el("ul", { class: "warnings" }, prediction.warnings.map((w) => el("li", { text: w }))) : null,
    ]);
    return el("article", { class: "card result", "data-prediction-id": String(prediction.id) }, [images, body]);
  }

  function carriesFiles(event) {
    return Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  }

  dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
  dropZone.addEventListener("dragleave", (event) => {
    // Passing over the zone's own text or link is not leaving it.
    if (!dropZone.contains(event.relatedTarget)) dropZone.classList.remove("dragging");
  });
  // Files dropped anywhere on the page are taken as if dropped on the zone: otherwise the browser
  // opens the file in place of this page and the form is lost.
  window.addEventListener("dragover", (event) => { if (carriesFiles(event)) event.preventDefault(); });
  window.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dropZone.classList.remove("dragging");
    if (event.dataTransfer.files.length) setFiles(event.dataTransfer.files);
  });
  input.addEventListener("change", () => setFiles(input.files));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errors.innerHTML = "";
    results.innerHTML = "";  // earlier answers are not left under a new request's outcome
    if (!selected.length) { showErrors("Choose or drop at least one image."); return; }
    if (selected.length > maxFiles) { showErrors("At most " + maxFiles + " images can be classified at once."); return; }
    // Refused here rather than after a long upload; the server checks the same limit.
    const tooLarge = tooLargeFiles();
    if (tooLarge.length) {
      statusLine.textContent = "Not sent; nothing was stored.";
      showErrors(tooLargeMessages(tooLarge));
      return;
    }
    const data = new FormData();
    selected.forEach((file) => data.append("images", file, file.name));
    const [kind, id] = select.value.split(":");
    data.append(kind === "dataset" ? "dataset" : "model", id);
    if (tta.checked) data.append("tta", "true");
    const token = form.querySelector("input[name=csrfmiddlewaretoken]").value;
    const previews = previewUrls.slice();
    button.disabled = true;
    statusLine.textContent = "Classifying " + countImages(selected.length) + "…";
    let response, payload;
    try {
      response = await fetch(form.dataset.endpoint, {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "X-CSRFToken": token, "Accept": "application/json" },
      });
      payload = await response.json().catch(() => response.statusText);
    } catch (err) {
      statusLine.textContent = "The connection failed; nothing was classified.";
      button.disabled = false;
      return;
    }
    button.disabled = false;
    if (response.status !== 201) {
      statusLine.textContent = "Not classified (" + response.status + "); nothing was stored.";
      showErrors(payload);
      return;
    }
    statusLine.textContent = "Classified " + countImages(payload.length) + ".";
    results.innerHTML = "";
    shownUrls.filter((url) => !previewUrls.includes(url)).forEach((url) => URL.revokeObjectURL(url));
    shownUrls = previews;
    payload.forEach((prediction, i) => results.appendChild(renderResult(prediction, previews[i])));
  });
})();
