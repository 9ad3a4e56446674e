// The trajectory explorer (written by pipeline/explorer.py beside a sweep's report).
// fits.js hands over the table of fits; a fit's own file (its curves, snapshots and spectra) is
// loaded by a <script> tag the first time the fit is shown, which works from disk and from any
// static file server alike.
"use strict";

const DIPExplorer = (() => {
  const MAX_SHOWN = 4;
  const FIT_FOLDER = "explorer/fit-v2/";
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
  const BAND_COLOURS = ["#440154", "#3b528b", "#21918c", "#5ec962", "#d4b200"];
  const DASHES = ["solid", "dash", "dot", "dashdot"];
  const TIME_PLOTS = ["psnr", "fbc", "ratio"];
  const fits = {};      // key -> the fit's data, once loaded
  let shown = [];       // keys on screen, in the order they were chosen
  let steps = [];       // the slider's iterations: every snapshot of the shown fits
  let table = null;
  let quiet = false;    // set while the page itself deselects rows
  let exported = null;  // keys whose files the report wrote, when it wrote only some (else null: all)

  const $id = (id) => document.getElementById(id);
  const status = (text) => { $id("status").textContent = text; };

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const tag = document.createElement("script");
      tag.src = src;
      tag.onload = resolve;
      tag.onerror = () => reject(new Error(`cannot load ${src}`));
      document.body.appendChild(tag);
    });
  }

  async function loadFit(key) {
    if (exported && !exported.has(key)) {
      throw new Error(`fit ${key}: this report holds the data of ${exported.size} of the ${table.rows().count()} ` +
        "fits (grey rows have none); dip report --explorer-fits all writes every fit's");
    }
    if (!fits[key]) await loadScript(FIT_FOLDER + key + ".js");
    return fits[key];
  }

  // The snapshot of a fit nearest to an iteration (index into its snapshots), or -1 when it has none.
  function nearest(fit, iteration) {
    const its = fit.snapshots.iteration;
    let best = -1;
    its.forEach((it, i) => { if (best < 0 || Math.abs(it - iteration) < Math.abs(its[best] - iteration)) best = i; });
    return best;
  }

  function figure(caption, src, role) {
    const fig = document.createElement("figure");
    if (src) {
      const img = document.createElement("img");
      img.src = src;
      img.alt = caption;
      img.className = role;
      fig.appendChild(img);
    } else {
      const empty = document.createElement("div");
      empty.className = "missing " + role;
      empty.textContent = "not stored";
      fig.appendChild(empty);
    }
    const text = document.createElement("figcaption");
    text.textContent = caption;
    fig.appendChild(text);
    return fig;
  }

  function drawImages(iteration) {
    const box = $id("images");
    box.replaceChildren();
    shown.forEach((key, n) => {
      const fit = fits[key];
      const i = nearest(fit, iteration);
      const row = document.createElement("div");
      row.className = "fit-row";
      row.dataset.key = key;
      const name = document.createElement("div");
      name.className = "fit-name";
      name.style.borderColor = COLOURS[n];
      name.textContent = `#${n + 1} ${fit.label}`;
      const at = document.createElement("span");
      at.className = "at";
      at.textContent = i < 0 ? "no snapshots stored" : `snapshot at iteration ${fit.snapshots.iteration[i]}`;
      name.appendChild(at);
      row.appendChild(name);
      if (fit.snapshots.signal) { at.textContent += " (a 1-D signal: drawn below)"; box.appendChild(row); return; }
      row.appendChild(figure("output", i < 0 ? null : fit.snapshots.output[i], "output"));
      row.appendChild(figure("degraded", fit.degraded, "degraded"));
      row.appendChild(figure("clean", fit.clean, "clean"));
      row.appendChild(figure("error |output − clean|, 0–0.25", i < 0 ? null : fit.snapshots.error[i], "error"));
      box.appendChild(row);
    });
  }

  function cursor(iteration) {
    return [{ type: "line", xref: "x", yref: "paper", x0: iteration, x1: iteration, y0: 0, y1: 1,
              line: { color: "#444", width: 1, dash: "dot" } }];
  }

  function layout(title, ytitle, iteration, extra) {
    return Object.assign({ title: { text: title, font: { size: 14 } }, margin: { l: 55, r: 10, t: 35, b: 40 },
      xaxis: { title: { text: "iteration" } }, yaxis: { title: { text: ytitle } },
      legend: { font: { size: 10 } }, shapes: cursor(iteration) }, extra || {});
  }

  function marks(fit, n) {
    const m = fit.marks;
    const points = (name, list, symbol) => ({
      name: `#${n + 1} ${name}`, x: list.map((p) => p[0]), y: list.map((p) => p[1]), mode: "markers",
      marker: { symbol, size: 11, color: COLOURS[n], line: { color: "black", width: 1 } }, legendgroup: `fit${n}`,
    });
    const traces = [];
    if (m.best) traces.push(points("oracle (best PSNR)", [m.best], "star"));
    if (m.stop) traces.push(points("auto-stop", [m.stop], "x"));
    if (m.fallbacks.length) traces.push(points("fallback", m.fallbacks, "triangle-down"));
    return traces;
  }

  function drawCurves(iteration) {
    const psnr = [], fbc = [], ratio = [];
    shown.forEach((key, n) => {
      const fit = fits[key], c = fit.curves, group = `fit${n}`;
      const line = (name, y, extra) => Object.assign({ name: `#${n + 1} ${name}`, x: c.iteration, y, mode: "lines",
        legendgroup: group, line: { color: COLOURS[n], width: 1.5 } }, extra || {});
      if (c.psnr_clean) psnr.push(line("PSNR vs clean", c.psnr_clean));
      if (c.psnr_target) psnr.push(line("PSNR vs degraded", c.psnr_target, { line: { color: COLOURS[n], dash: "dot", width: 1 } }));
      psnr.push(...marks(fit, n));
      for (let b = 1; b <= 5; b++) {
        if (c[`fbc_${b}`]) fbc.push(line(`band ${b}`, c[`fbc_${b}`], { line: { color: BAND_COLOURS[b - 1], dash: DASHES[n], width: 1.5 } }));
      }
      Object.keys(c).filter((name) => name.startsWith("se_")).forEach((name, k) => {
        fbc.push(line(`SE(k${name.slice(3)})`, c[name], { line: { color: BAND_COLOURS[(2 * k) % 5], dash: DASHES[n], width: 1.5 } }));
      });
      if (c.ratio) ratio.push(line("blur / sharpness", c.ratio));
    });
    Plotly.react("psnr", psnr, layout("PSNR (★ oracle, × auto-stop, ▼ fallback)", "dB", iteration));
    const oneD = fbc.length && fbc.every((t) => t.name.includes("SE("));
    Plotly.react("fbc", fbc, oneD
      ? layout("amplitude error SE(k) per frequency (C&M Fig. 3)", "SE(k)", iteration, { yaxis: { type: "log", title: { text: "SE(k)" } } })
      : layout("frequency-band correspondence (band 1 lowest)", "FBC", iteration));
    Plotly.react("ratio", ratio, layout("blur / sharpness ratio (auto-stop signal)", "ratio", iteration,
      { yaxis: { type: "log", title: { text: "ratio (log)" } } }));
  }

  function drawSignals(iteration) {
    const traces = shown.map((key, n) => {
      const fit = fits[key], i = nearest(fit, iteration);
      return { name: `#${n + 1} output at ${fit.snapshots.iteration[i]}`, y: fit.snapshots.signal[i], mode: "lines",
        line: { color: COLOURS[n], width: 1.5 } };
    });
    Plotly.react("spectrum", traces, layout("output signal at the slider's iteration", "value", iteration,
      { xaxis: { title: { text: "sample" } }, shapes: [] }));
  }

  function drawSpectrum(iteration) {
    if (shown.every((key) => fits[key].snapshots.signal)) { drawSignals(iteration); return; }
    const traces = [];
    shown.forEach((key, n) => {
      const fit = fits[key], i = nearest(fit, iteration);
      if (fit.clean_power) traces.push({ name: `#${n + 1} clean image`, x: fit.frequency, y: fit.clean_power, mode: "lines",
        line: { color: COLOURS[n], dash: "dot", width: 1 } });
      if (i >= 0 && fit.snapshots.power.length) traces.push({ name: `#${n + 1} output at ${fit.snapshots.iteration[i]}`,
        x: fit.frequency, y: fit.snapshots.power[i], mode: "lines", line: { color: COLOURS[n], width: 1.5 } });
    });
    Plotly.react("spectrum", traces, layout("radial power spectrum at the slider's iteration", "mean power |F|²", iteration,
      { xaxis: { title: { text: "radial frequency (cycles / pixel)" } }, yaxis: { type: "log", title: { text: "mean power |F|²" } }, shapes: [] }));
  }

  function moveTo(index) {
    const iteration = steps[index];
    $id("iteration").textContent = iteration === undefined ? "–" : iteration;
    drawImages(iteration);
    drawSpectrum(iteration);
    TIME_PLOTS.forEach((id) => Plotly.relayout(id, { shapes: cursor(iteration) }));
  }

  async function show(keys) {
    shown = keys.slice(0, MAX_SHOWN);
    history.replaceState(null, "", "#fits=" + shown.join(","));
    status(`loading ${shown.length} fit(s)…`);
    try {
      await Promise.all(shown.map(loadFit));
    } catch (err) {
      status(err.message);
      return;
    }
    const all = new Set();
    shown.forEach((key) => fits[key].snapshots.iteration.forEach((it) => all.add(it)));
    if (!all.size) shown.forEach((key) => all.add(fits[key].curves.iteration.at(-1)));
    steps = [...all].sort((a, b) => a - b);
    const slider = $id("slider");
    slider.max = Math.max(steps.length - 1, 0);
    slider.value = slider.max;
    drawCurves(steps.at(-1));
    moveTo(Number(slider.value));
    status(`${table.rows().count()} fits · showing ${shown.length}: ${shown.map((k) => fits[k].label).join(" | ")}`);
  }

  async function buildTable(payload) {
    const source = URL.createObjectURL(new Blob([window.DIP_DATATABLES], { type: "text/javascript" }));
    const { default: DataTable } = await import(source);
    URL.revokeObjectURL(source);
    const spec = payload.spec.length + 2;
    const columns = [{ title: "key", visible: false }, { title: "fit" }]
      .concat(payload.spec.map((c) => ({ title: c })), payload.outcome.map((c) => ({ title: c, className: "dt-right" })));
    table = new DataTable("#fits", {
      data: payload.rows,
      columns,
      columnDefs: [
        { targets: Array.from({ length: spec - 1 }, (_, i) => i + 1),
          columnControl: ["order", ["orderAsc", "orderDesc", "orderClear", "spacer", "rowGroup", "spacer", "searchList"]] },
        { targets: Array.from({ length: payload.outcome.length }, (_, i) => i + spec),
          columnControl: ["order", ["orderAsc", "orderDesc", "orderClear", "spacer", "search"]] },
      ],
      order: [],
      pageLength: 10,
      lengthMenu: [10, 25, 100, 1000],
      select: { style: "multi" },
      createdRow: (row, data) => { if (exported && !exported.has(data[0])) row.classList.add("no-data"); },
      scrollX: true,
      deferRender: true,  // rows are built when first shown: a table of 10,000 fits opens quickly
    });
    table.on("select", (e, dt, type, indexes) => {
      const picked = table.rows(indexes).data().toArray().map((r) => r[0]);
      const keys = shown.concat(picked.filter((k) => !shown.includes(k)));
      const dropped = keys.slice(0, Math.max(0, keys.length - MAX_SHOWN));
      quiet = true;
      if (dropped.length) table.rows((i, row) => dropped.includes(row[0])).deselect();
      quiet = false;
      show(keys.slice(-MAX_SHOWN));
    });
    table.on("deselect", (e, dt, type, indexes) => {
      if (quiet) return;
      const gone = table.rows(indexes).data().toArray().map((r) => r[0]);
      const keys = shown.filter((k) => !gone.includes(k));
      if (keys.length && keys.length !== shown.length) show(keys);
    });
    const asked = decodeURIComponent(location.hash.replace(/^#fits=/, "")).split(",").filter(Boolean);
    const known = new Set(payload.rows.map((r) => r[0]));
    const first = asked.filter((k) => known.has(k));
    shown = [];
    const openable = payload.rows.filter((r) => !exported || exported.has(r[0]));
    const keys = first.length ? first : openable.slice(0, 1).map((r) => r[0]);
    table.rows((i, row) => keys.includes(row[0])).select();
  }

  $id("slider").addEventListener("input", (e) => moveTo(Number(e.target.value)));

  return {
    table(payload) {
      document.title = `${payload.title} · trajectory explorer`;
      exported = payload.exported ? new Set(payload.exported) : null;
      if (!payload.rows.length) { status("no fits to show"); return; }
      buildTable(payload).catch((err) => { status(err.message); console.error(err); });
    },
    fit(payload) { fits[payload.key] = payload; },
    show,
  };
})();
