// Model comparison page: sortable table (click a heading) and overlaid training curves (SVG).
(function () {
  "use strict";
  const COLOURS = ["#1f6feb", "#cf222e", "#1a7f37", "#9a6700", "#8250df", "#0a7d8c", "#bf3989", "#57606a"];

  // --- Sorting ---------------------------------------------------------------------------------

  function sortValue(cell, kind) {
    const raw = cell.dataset.sort;
    if (kind === "text") return raw.toLowerCase();
    return raw === "" ? null : Number(raw);
  }

  function sortTable(table, column, kind, descending) {
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = sortValue(a.cells[column], kind), y = sortValue(b.cells[column], kind);
      if (x === null && y === null) return 0;
      if (x === null) return 1; // unknown values last, whichever the direction
      if (y === null) return -1;
      const order = x < y ? -1 : x > y ? 1 : 0;
      return descending ? -order : order;
    });
    rows.forEach((row) => body.appendChild(row));
  }

  function makeSortable(table) {
    const headers = Array.from(table.tHead.rows[0].cells);
    headers.forEach((th, column) => {
      const activate = () => {
        const kind = th.dataset.kind || "text";
        // Numbers start with the best value (high-to-low unless lower is better, as for ECE or
        // latency); a second click reverses.
        const descending = th.getAttribute("aria-sort") === "none"
          ? kind !== "text" && th.dataset.better !== "lower"
          : th.getAttribute("aria-sort") === "ascending";
        headers.forEach((other) => other.setAttribute("aria-sort", "none"));
        th.setAttribute("aria-sort", descending ? "descending" : "ascending");
        sortTable(table, column, kind, descending);
      };
      th.addEventListener("click", activate);
      th.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); activate(); }
      });
    });
  }

  document.querySelectorAll("table.sortable").forEach(makeSortable);

  // --- Curves ----------------------------------------------------------------------------------

  function drawCurves(svg, legend, histories, key) {
    legend.textContent = "";
    const series = histories.map((h, i) => ({
      name: h.model,
      runs: MedCharts.runs(h.history || [], key),
      colour: COLOURS[i % COLOURS.length],
      attrs: { "data-model": h.model },
    }));
    if (!MedCharts.draw(svg, series, "no " + key.replace("_", " ") + " recorded")) return;
    series.forEach((s) => {
      if (!s.runs.length) return;
      const item = document.createElement("span");
      const swatch = document.createElement("i");
      swatch.style.background = s.colour;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.name));
      legend.appendChild(item);
    });
  }

  const data = document.getElementById("compare-curves");
  const svg = document.getElementById("curves");
  const select = document.getElementById("curve-metric");
  const legend = document.getElementById("curve-legend");
  if (data && svg && select && legend) {
    const histories = JSON.parse(data.textContent).histories || [];
    const redraw = () => drawCurves(svg, legend, histories, select.value);
    select.addEventListener("change", redraw);
    redraw();
  }
})();
