// ddmr serve: the page's script. Plain JavaScript, no library, nothing loaded from elsewhere.
// The server keeps each result in memory; this page asks for one PNG slice per panel
// (/api/results/<id>/slice/<view>/<axis>/<index>.png) whenever a slider moves.
"use strict";

const $ = (id) => document.getElementById(id);
const PANELS = [  // [caption, view name or a control whose value is the view]
  ["fixed", "fixed"], ["moving", "moving"], ["warped", "warped"],
  ["overlay", () => $("overlay").value], ["deformation", () => $("deformation").value],
  ["Jacobian determinant", "jacobian"],
];
let current = null;  // the summary of the result on show
let started = 0;     // when Register was pressed (ms)

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function setState(state) { document.body.dataset.state = state; }

function showError(message) {
  const box = $("error");
  box.textContent = message;  // text, never HTML: messages may quote file names
  box.hidden = false;
  setState("error");
}

async function loadModels() {
  const res = await fetch("/api/models");
  const info = await res.json();
  const select = $("model");
  for (const m of info.models) {
    const opt = document.createElement("option");
    opt.value = m.key;
    opt.textContent = m.label + (m.default ? " (default)" : "");
    opt.selected = m.default;
    select.appendChild(opt);
  }
}

function sourceChanged() {
  $("uploads").hidden = document.querySelector("input[name=source]:checked").value !== "upload";
}

function register(event) {
  event.preventDefault();
  $("error").hidden = true;
  const form = $("form");
  const data = new FormData(form);
  const upload = data.get("source") === "upload";
  let bytes = 0;
  for (const role of ["fixed", "moving", "fixed_seg", "moving_seg"]) {
    const f = data.get(role);
    if (!upload || !f || !f.name) { data.delete(role); } else { bytes += f.size; }
  }
  const limit = parseFloat(document.body.dataset.maxUploadMb) * 1048576;
  if (upload && bytes > limit) {  // the server refuses it too (413); this says so before sending
    showError(`the upload is larger than this server's limit of ${document.body.dataset.maxUploadMb} MB`);
    return;
  }
  const xhr = new XMLHttpRequest();
  const bar = $("bar"), status = $("status");
  started = performance.now();
  let timer = null;
  const registering = () => {
    bar.removeAttribute("value");  // indeterminate: the server does not report steps
    timer = setInterval(() => {
      status.textContent = `registering… ${((performance.now() - started) / 1000).toFixed(1)} s`;
    }, 100);
    status.textContent = "registering…";
  };
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable && bytes > 0) {
      bar.value = Math.round(100 * e.loaded / e.total);
      status.textContent = `uploading ${bar.value} %`;
    }
  };
  xhr.upload.onload = registering;
  const done = () => { clearInterval(timer); $("register").disabled = false; $("progress").hidden = true; };
  xhr.onload = () => {
    done();
    let body = null;
    try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
    if (xhr.status !== 200) {
      showError((body && body.error) || `the server answered ${xhr.status}`);
      return;
    }
    showResult(body);
  };
  xhr.onerror = () => { done(); showError("the connection to the server failed (too large an upload, or the server stopped)"); };
  xhr.open("POST", "/api/register");
  $("register").disabled = true;
  $("progress").hidden = false;
  bar.value = 0;
  status.textContent = upload ? "uploading…" : "";
  if (!upload) registering();
  setState("running");
  xhr.send(data);
}

function row(table, cells, header = false) {
  const tr = document.createElement("tr");
  cells.forEach((c, i) => {
    const td = document.createElement(header ? "th" : "td");
    td.textContent = c;
    if (!header && i > 0) td.className = "num";
    tr.appendChild(td);
  });
  table.appendChild(tr);
}

function showMetrics(r) {
  const m = r.metrics, t = $("metrics");
  t.replaceChildren();
  row(t, ["", "before", "after"], true);
  row(t, ["NCC (similarity)", fmt(m.ncc.before), fmt(m.ncc.after)]);
  if (m.dice) {
    for (const d of m.dice) row(t, [`Dice ${d.name}`, fmt(d.before), fmt(d.after)]);
    row(t, ["Dice, mean", fmt(m.dice_mean.before), fmt(m.dice_mean.after)]);
    if (m.tre_mm_mean && m.tre_mm_mean.after !== null) {
      row(t, ["TRE of the centroids, mean (mm)", fmt(m.tre_mm_mean.before, 2), fmt(m.tre_mm_mean.after, 2)]);
    }
  }
  const j = m.jacobian;
  row(t, ["folding (% of voxels, Jacobian ≤ 0)", "", fmt(j.folding_percent, 4)]);
  row(t, ["Jacobian determinant min / median / max", "", `${fmt(j.min, 2)} / ${fmt(j.median, 2)} / ${fmt(j.max, 2)}`]);
  const ts = r.timings_s;
  $("runtime").textContent =
    `runtime ${fmt(ts.registration, 2)} s (preprocess ${fmt(ts.preprocess, 2)}, predict ${fmt(ts.predict, 2)}, ` +
    `apply ${fmt(ts.apply, 2)}); server ${fmt(r.server_s, 2)} s; model ${r.model}; grid ${r.shape.join("×")} ` +
    `at ${r.spacing_mm.map((s) => s.toFixed(2)).join("×")} mm`;
  const ul = $("downloads");
  ul.replaceChildren();
  for (const d of r.downloads) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = `/api/results/${r.id}/files/${d.name}`;
    a.textContent = d.name;
    a.setAttribute("download", d.name);
    li.append(a, ` – ${d.what}`);
    ul.appendChild(li);
  }
}

function legend(r) {
  const p = $("legend");
  const sw = (c) => `<span class="swatch" style="background:${c}"></span>`;
  // fixed markup, numbers only: no text from the request goes in here
  p.innerHTML =
    `Jacobian: ${sw("#2166ac")} &lt; 1 shrinks ${sw("#f7f7f7")} 1 ${sw("#b2182b")} &gt; 1 expands ` +
    `${sw("rgb(255,230,0)")} ≤ 0 folded. Magnitude: 0 to ${Number(r.magnitude_max_mm).toFixed(1)} mm (viridis). ` +
    `Grid: the moving image's grid pulled back onto the fixed image. Slices are shown with the grid's axes ` +
    `closest to RAS: the subject's right on the right (axial, coronal), superior or anterior up.`;
}

function sliceUrl(view, axis, index) {
  const labels = $("labels").checked && current.has_labels ? "?labels=1" : "";
  return `/api/results/${current.id}/slice/${view}/${axis}/${index}.png${labels}`;
}

function refreshAxis(axis) {
  const viewer = document.querySelector(`.viewer[data-axis="${axis}"]`);
  const slider = viewer.querySelector("input[type=range]");
  const index = parseInt(slider.value, 10);
  viewer.querySelector(".slice-no").textContent = `slice ${index + 1} / ${Number(slider.max) + 1}`;
  viewer.querySelectorAll("img").forEach((img, i) => {
    const v = PANELS[i][1];
    img.src = sliceUrl(typeof v === "function" ? v() : v, axis, index);
  });
}

function refreshAll() { if (current) current.axes.forEach((a) => refreshAxis(a.axis)); }

function showResult(r) {
  current = r;
  showMetrics(r);
  legend(r);
  $("labels-toggle").hidden = !r.has_labels;
  const viewers = $("viewers");
  viewers.replaceChildren();
  for (const ax of r.axes) {
    const div = document.createElement("div");
    div.className = "viewer";
    div.dataset.axis = ax.axis;
    const h = document.createElement("h3");
    const title = document.createElement("span");
    title.textContent = ax.name;
    const slider = document.createElement("input");
    slider.type = "range";
    slider.min = 0;
    slider.max = ax.size - 1;
    slider.value = Math.floor(ax.size / 2);
    slider.setAttribute("aria-label", `${ax.name} slice`);
    slider.addEventListener("input", () => refreshAxis(ax.axis));
    const no = document.createElement("span");
    no.className = "slice-no hint";
    h.append(title, slider, no);
    const rowDiv = document.createElement("div");
    rowDiv.className = "row";
    for (const [caption] of PANELS) {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.alt = `${caption}, ${ax.name}`;
      img.dataset.panel = caption;
      img.style.aspectRatio = String(ax.aspect);
      const cap = document.createElement("figcaption");
      cap.textContent = caption;
      fig.append(img, cap);
      rowDiv.appendChild(fig);
    }
    div.append(h, rowDiv);
    viewers.appendChild(div);
  }
  $("result").hidden = false;
  refreshAll();
  // "done" once every panel has its picture: the time from Register to a full page
  const imgs = Array.from(viewers.querySelectorAll("img"));
  Promise.all(imgs.map((img) => img.decode().catch(() => null))).then(() => {
    const s = (performance.now() - started) / 1000;
    document.body.dataset.shownIn = s.toFixed(2);
    $("runtime").textContent += `; shown in ${s.toFixed(2)} s`;
    setState("done");
  });
}

document.addEventListener("DOMContentLoaded", () => {
  loadModels().catch(() => showError("cannot reach the server"));
  document.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", sourceChanged));
  $("form").addEventListener("submit", register);
  for (const id of ["overlay", "deformation", "labels"]) $(id).addEventListener("change", refreshAll);
  sourceChanged();
});
