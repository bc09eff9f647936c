// Model comparison page: sortable table (click a heading) and overlaid training curves (SVG).
(function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
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
        // Numbers start high-to-low (best accuracy first); a second click reverses.
        const descending = th.getAttribute("aria-sort") === "none" ? kind !== "text"
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

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function drawCurves(svg, legend, histories, key) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    legend.textContent = "";
    const W = 600, H = 240, L = 44, R = 10, T = 10, B = 26;
    const series = histories.map((h, i) => ({
      name: h.model,
      colour: COLOURS[i % COLOURS.length],
      points: (h.history || []).map((e, j) => [typeof e.epoch === "number" ? e.epoch : j + 1, e[key]])
        .filter((p) => typeof p[1] === "number" && isFinite(p[1])),
    }));
    const all = series.flatMap((s) => s.points);
    if (!all.length) {
      svg.appendChild(el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6b7e" },
        "no " + key.replace("_", " ") + " recorded"));
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
    series.forEach((s) => {
      if (!s.points.length) return;
      const line = s.points.map((p) => sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1)).join(" ");
      svg.appendChild(el("polyline", { points: line, fill: "none", stroke: s.colour, "stroke-width": 2,
        "vector-effect": "non-scaling-stroke", "data-model": s.name }));
      // Markers too, so a single-epoch history still shows.
      s.points.forEach((p) => svg.appendChild(el("circle", { cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1),
        r: 2.5, fill: s.colour })));
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
