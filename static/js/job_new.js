// Launch form (/jobs/new/): shows the chosen preset's value of each field (as the placeholder of
// an input, in the "(preset: …)" option of a list), a note when the preset was made for another
// dataset than the chosen one, and a summary of the configuration the job would get: the
// preset's config as the server resolves it (json_script "launch-data") with the fields the user
// filled in on top. Nothing here decides anything: the server validates what is submitted.
(function () {
  "use strict";
  const source = document.getElementById("launch-data");
  const form = document.getElementById("launch-form");
  if (!source || !form) return;
  const data = JSON.parse(source.textContent);
  const presetSelect = form.elements.preset;
  const datasetSelect = form.elements.dataset;
  const note = document.getElementById("preset-note");
  const summary = document.getElementById("config-summary");
  const list = document.getElementById("config-summary-list");
  const has = (object, key) => Object.prototype.hasOwnProperty.call(object, key);

  // A setting's value as the page shows it; training/forms.py's display_value is the same.
  function display(value, choices) {
    if (choices) {
      const code = typeof value === "boolean" ? (value ? "1" : "0") : String(value);
      if (has(choices, code)) return choices[code];
    }
    if (value === null || value === undefined) return "none";
    if (typeof value === "boolean") return value ? "yes" : "no";
    return String(value);
  }

  function lookup(config, key) {
    return key.split(".").reduce(
      (value, part) => (value !== null && typeof value === "object" ? value[part] : undefined),
      config);
  }

  function chosenPreset() {
    const name = presetSelect ? presetSelect.value : "";
    return has(data.presets, name) ? name : "";
  }

  // What the user entered for a setting, or undefined when its field is blank (or it has none).
  function entered(setting) {
    if (!setting.field) return undefined;
    const input = form.elements[setting.field];
    if (!input || input.value === "") return undefined;
    const kind = input.dataset.configKind;
    if (kind === "int" || kind === "float") {
      const number = Number(input.value);
      return Number.isFinite(number) ? number : input.value;
    }
    if (kind === "bool") return input.value === "1";
    return input.value;
  }

  function showPresetValues(config, word) {
    data.settings.forEach((setting) => {
      const input = setting.field && form.elements[setting.field];
      if (!input) return;
      const text = display(lookup(config, setting.key), setting.choices);
      if (input.tagName === "SELECT") {
        const blank = Array.from(input.options).find((option) => option.value === "");
        if (blank) blank.textContent = `(${word}: ${text})`;
      } else {
        input.placeholder = text;
      }
    });
  }

  function showNote(preset) {
    if (!note) return;
    const hint = preset.hint;
    const kind = datasetSelect ? data.datasets[datasetSelect.value] : undefined;
    const text = hint && kind && hint !== kind
      ? data.note.replace("{hint}", hint).replace("{kind}", kind) : "";
    note.textContent = text;
    note.hidden = !text;
  }

  function item(key, label, value) {
    const row = document.createElement("div");
    row.dataset.key = key;
    const term = document.createElement("dt");
    term.textContent = label;
    const description = document.createElement("dd");
    description.append(value);
    row.append(term, description);
    return row;
  }

  function showSummary(preset, word) {
    if (!summary || !list) return;
    const rows = [item("preset", "Preset", preset.title)];
    let overridden = 0;
    data.settings.forEach((setting) => {
      const presetText = display(lookup(preset.config, setting.key), setting.choices);
      const value = entered(setting);
      if (value === undefined) {
        rows.push(item(setting.key, setting.label, presetText));
        return;
      }
      overridden += 1;
      const mark = document.createElement("mark");
      mark.textContent = display(value, setting.choices);
      const was = document.createElement("small");
      was.className = "muted";
      was.textContent = ` ${word}: ${presetText}`;
      const fragment = document.createDocumentFragment();
      fragment.append(mark, was);
      const row = item(setting.key, setting.label, fragment);
      row.className = "override";
      rows.push(row);
    });
    list.replaceChildren(...rows);
    list.dataset.overrides = String(overridden);
    summary.hidden = false;
  }

  function update() {
    const name = chosenPreset();
    const preset = data.presets[name];
    const word = name ? "preset" : "default";
    showPresetValues(preset.config, word);
    showNote(preset);
    showSummary(preset, word);
  }

  form.addEventListener("input", update);
  form.addEventListener("change", update);
  update();
})();
