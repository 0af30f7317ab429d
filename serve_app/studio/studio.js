// bgremove studio: plain JavaScript over the service's own HTTP API (no build step).
"use strict";

const $ = (id) => document.getElementById(id);
const keyInput = $("api-key");
keyInput.value = localStorage.getItem("bgremove-api-key") || "";
keyInput.addEventListener("change", () => localStorage.setItem("bgremove-api-key", keyInput.value.trim()));

function headers(extra = {}) {
  const key = keyInput.value.trim();
  return key ? { "X-Api-Key": key, ...extra } : extra;
}

// Every route family's error body, as one sentence (spec 000 message/detail, 002, 003).
function errorText(status, body) {
  if (body && typeof body === "object") {
    if (body.error && body.error.message) return body.error.message;
    if (body.message) return body.message;
    if (typeof body.detail === "string") return body.detail;
  }
  return `The service answered ${status}.`;
}

function show(id, text) { const el = $(id); el.textContent = text; el.hidden = !text; }
const fail = (text) => { show("notice", ""); show("error", text); };
const notify = (text) => { show("error", ""); show("notice", text); };

async function call(path, options = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...options, headers: headers(options.headers) });
  } catch (e) {
    throw new Error(`The service cannot be reached (${e.message}).`);
  }
  if (resp.status >= 400) {
    let body = null;
    try { body = await resp.json(); } catch (e) { /* not JSON */ }
    let text = errorText(resp.status, body);
    const retry = resp.headers.get("Retry-After");
    if (retry) text += ` Retry in ${retry} s.`;
    throw new Error(text);
  }
  return resp;
}

const toBase64 = (file) => new Promise((resolve, reject) => {
  const reader = new FileReader();
  reader.onload = () => resolve(reader.result.split(",", 2)[1]);
  reader.onerror = () => reject(new Error("The file could not be read."));
  reader.readAsDataURL(file);
});

// ---- tabs ---------------------------------------------------------------------------------
document.querySelectorAll("nav button").forEach((button) => button.addEventListener("click", () => {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b === button));
  show("notice", ""); show("error", "");  // a message belongs to the tab it came from
  document.querySelectorAll("main > section").forEach((s) => { s.hidden = s.id !== `tab-${button.dataset.tab}`; });
  if (button.dataset.tab === "wins") loadWins();
}));

// ---- shotgun: every model, side by side; pick the best -----------------------------------
let shot = null;      // the last /remove-background answer
let picked = null;    // its chosen row
let originalUrl = null;  // the photo the shotgun ran on
let licences = null;  // model id -> {license, license_terms}, from /models

async function modelLicences() {
  if (licences === null) {
    try {
      const models = await (await call("/models")).json();
      licences = Object.fromEntries(models.map((m) => [m.id, m]));
    } catch (e) { licences = {}; }
  }
  return licences;
}

async function runShotgun(file) {
  show("error", ""); show("notice", "");
  $("results").replaceChildren(); $("pick").hidden = true; picked = null;
  closeCompare();
  if (originalUrl) URL.revokeObjectURL(originalUrl);
  originalUrl = URL.createObjectURL(file);
  $("image-status").textContent = `Running every model on ${file.name}…`;
  try {
    const body = JSON.stringify({ image: await toBase64(file), include_models: ["all"] });
    const resp = await call("/remove-background", { method: "POST", body, headers: { "Content-Type": "application/json" } });
    shot = await resp.json();
  } catch (e) {
    $("image-status").textContent = ""; fail(e.message); return;
  }
  $("image-status").textContent = `${shot.results.length} models, ${shot.processing_time_ms} ms, $${shot.total_cost_usd.toFixed(6)} — click the best result.`;
  const known = await modelLicences();
  for (const row of shot.results) {
    const card = document.createElement("div");
    card.className = "card" + (row.status === "success" ? "" : " failed");
    card.dataset.model = row.model_id;
    const title = document.createElement("h3");
    title.textContent = row.model_name;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = row.status === "success"
      ? `${row.processing_time_ms} ms · $${row.cost_usd.toFixed(6)}` : `failed: ${row.error}`;
    card.append(title);
    if (row.status === "success") {
      const frame = document.createElement("div");
      frame.className = "checker";
      const img = document.createElement("img");
      img.src = `data:image/${shot.output_format || "png"};base64,${row.image_base64}`;
      img.alt = row.model_id;
      frame.append(img);
      card.append(frame);
      card.addEventListener("click", () => openCompare(row.model_id));
    }
    card.append(meta);
    const licence = known[row.model_id];
    if (licence) {  // every model's licence; copyleft / non-commercial ones stand out
      const tag = document.createElement("div");
      tag.className = "licence" + (licence.license_terms === "permissive" ? "" : " restricted");
      tag.textContent = `licence: ${licence.license}` +
        (licence.license_terms === "permissive" ? "" : ` (${licence.license_terms})`);
      card.append(tag);
    }
    $("results").append(card);
  }
}

// ---- compare: one result large, on any background, zoomed, beside another or the original --
const view = { a: null, b: "", zoom: "fit", bg: "checker", original: false };
const successes = () => (shot ? shot.results.filter((r) => r.status === "success") : []);
const rowOf = (id) => successes().find((r) => r.model_id === id);
const imageUrl = (row) => `data:image/${shot.output_format || "png"};base64,${row.image_base64}`;

function openCompare(modelId) {
  const row = rowOf(modelId);
  if (!row) return;
  view.a = modelId;
  const card = document.querySelector(`.card[data-model="${CSS.escape(modelId)}"]`);
  choose(row, card);
  const select = $("compare-b");
  const keep = select.value;
  select.replaceChildren(new Option("(none)", ""), ...successes().map((r) => new Option(r.model_name, r.model_id)));
  select.value = successes().some((r) => r.model_id === keep) ? keep : "";
  view.b = select.value;
  $("compare").hidden = false;
  renderCompare();
}

function closeCompare() { $("compare").hidden = true; view.a = null; }

function paneImage(img, pane, row) {
  img.src = view.original ? originalUrl : imageUrl(row);
  img.alt = view.original ? "original" : row.model_id;
  pane.className = `pane ${view.bg.startsWith("#") ? "" : "bg-" + view.bg}`;
  pane.style.background = view.bg.startsWith("#") ? view.bg : "";
  const size = () => {
    pane.classList.toggle("fit", view.zoom === "fit");
    pane.classList.toggle("zoomed", view.zoom !== "fit" && view.zoom > 1);
    img.style.width = view.zoom === "fit" ? "" : `${img.naturalWidth * view.zoom}px`;
  };
  if (img.complete && img.naturalWidth) size(); else img.onload = size;
}

function renderCompare() {
  const row = rowOf(view.a);
  if (!row) return;
  $("compare-title").textContent = view.original ? "Original photo" : row.model_name;
  paneImage($("compare-a"), $("pane-a"), row);
  const other = view.b && rowOf(view.b);
  $("pane-b").hidden = !other;
  if (other) paneImage($("compare-b-img"), $("pane-b"), other);
  document.querySelectorAll("#backgrounds button").forEach((b) => b.classList.toggle("on", b.dataset.bg === view.bg));
  document.querySelectorAll("#zooms button").forEach((b) => b.classList.toggle("on", b.dataset.zoom === String(view.zoom)));
  $("show-original").classList.toggle("on", view.original);
}

const BACKGROUNDS = ["checker", "white", "black"];
const ZOOMS = ["fit", 1, 2, 4];
document.querySelectorAll("#backgrounds button").forEach((b) => b.addEventListener("click", () => { view.bg = b.dataset.bg; renderCompare(); }));
$("bg-custom").addEventListener("input", (e) => { view.bg = e.target.value; renderCompare(); });
document.querySelectorAll("#zooms button").forEach((b) => b.addEventListener("click", () => {
  view.zoom = b.dataset.zoom === "fit" ? "fit" : Number(b.dataset.zoom); renderCompare();
}));
$("show-original").addEventListener("click", () => { view.original = !view.original; renderCompare(); });
$("compare-b").addEventListener("change", (e) => { view.b = e.target.value; e.target.blur(); renderCompare(); });
$("compare-close").addEventListener("click", closeCompare);

// Both panes pan together (scrollbars, wheel, or dragging the image).
for (const [from, to] of [["pane-a", "pane-b"], ["pane-b", "pane-a"]]) {
  $(from).addEventListener("scroll", () => {
    if ($(to).scrollLeft !== $(from).scrollLeft) $(to).scrollLeft = $(from).scrollLeft;
    if ($(to).scrollTop !== $(from).scrollTop) $(to).scrollTop = $(from).scrollTop;
  });
  let drag = null;
  $(from).addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; e.preventDefault(); });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    $(from).scrollLeft -= e.clientX - drag[0]; $(from).scrollTop -= e.clientY - drag[1];
    drag = [e.clientX, e.clientY];
  });
}

document.addEventListener("keydown", (e) => {
  if ($("compare").hidden || ["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;
  const rows = successes();
  const at = rows.findIndex((r) => r.model_id === view.a);
  if (e.key >= "1" && e.key <= "9" && rows[Number(e.key) - 1]) openCompare(rows[Number(e.key) - 1].model_id);
  else if (e.key === "ArrowRight") openCompare(rows[(at + 1) % rows.length].model_id);
  else if (e.key === "ArrowLeft") openCompare(rows[(at - 1 + rows.length) % rows.length].model_id);
  else if (e.key === "o" || e.key === "O") { view.original = !view.original; renderCompare(); }
  else if (e.key === "b" || e.key === "B") {
    view.bg = BACKGROUNDS[(BACKGROUNDS.indexOf(view.bg) + 1) % BACKGROUNDS.length]; renderCompare();
  } else if (e.key === "+" || e.key === "-") {
    const i = ZOOMS.indexOf(view.zoom) + (e.key === "+" ? 1 : -1);
    view.zoom = ZOOMS[Math.max(0, Math.min(ZOOMS.length - 1, i))]; renderCompare();
  } else if (e.key === "Enter") $("log-selection").click();
  else if (e.key === "Escape") closeCompare();
  else return;
  e.preventDefault();
});

function choose(row, card) {
  picked = row;
  document.querySelectorAll(".card").forEach((c) => c.classList.toggle("selected", c === card));
  $("image-status").textContent = `${row.model_name} selected: compare it below, then "Use this one".`;
  $("pick").hidden = false;
  $("download").href = `data:image/png;base64,${row.image_base64}`;
  $("download").download = `${row.model_id}.png`;
}

$("log-selection").addEventListener("click", async () => {
  if (!shot || !picked) return;
  const body = { job_id: shot.job_id, selected_model_id: picked.model_id };
  const category = $("category").value.trim();
  if (category) body.image_category = category;
  try {
    await call("/log-selection", { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" } });
    notify(`Logged: ${picked.model_name} is the best for this image${category ? ` (${category})` : ""}.`);
  } catch (e) { fail(e.message); }
});

$("image-file").addEventListener("change", (e) => { if (e.target.files[0]) runShotgun(e.target.files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files[0]) runShotgun(e.dataTransfer.files[0]);
});

// ---- background effects (Image API v1), refined by clicks ----------------------------------
const clicks = { keep: [], remove: [] };

function showClicks() {
  const n = clicks.keep.length + clicks.remove.length;
  $("clicks").textContent = n ? `${clicks.keep.length} keep, ${clicks.remove.length} remove` : "";
  $("clear-clicks").hidden = !n;
}

async function applyEffect() {
  const file = $("effect-file").files[0];
  if (!file) { fail("Pick an image first."); return; }
  const effect = $("effect").value;
  const form = new FormData();
  form.append("image", file);
  const fields = { blur: ["blur_strength"], color: ["bg_color"], gradient: ["gradient_start", "gradient_end"],
                   shadow: ["shadow_opacity"] }[effect] || [];
  for (const name of fields) form.append(name, $(name).value);
  // output options (docs/output-options.md): sent only when they differ from the defaults
  if ($("output").value !== "rgba") form.append("output", $("output").value);
  if ($("refine").value !== "none") form.append("refine", $("refine").value);
  if ($("crop").checked) form.append("crop", "true");
  if ($("clean_mask").checked) form.append("clean_mask", "true");
  const asText = (pts) => pts.map(([x, y]) => `${x},${y}`).join(";");
  if (clicks.keep.length) form.append("points", asText(clicks.keep));
  if (clicks.remove.length) form.append("background_points", asText(clicks.remove));
  try {
    const resp = await call(`/image/${effect}/v1`, { method: "POST", body: form });
    $("effect-result").src = URL.createObjectURL(await resp.blob());
    window.lastEffectModel = resp.headers.get("X-Model");
    // model=auto says what it found and why it kept that model
    const found = resp.headers.get("X-Type");
    const why = found ? ` (auto: a ${found}; ${resp.headers.get("X-Auto-Reason") || ""})` : "";
    notify(`${effect}: done in ${resp.headers.get("X-Processing-Time-Ms") || "?"} ms with ${window.lastEffectModel || "the default model"}${why}.`);
  } catch (e) { fail(e.message); }
}

$("apply-effect").addEventListener("click", applyEffect);
$("effect-file").addEventListener("change", () => {
  clicks.keep = []; clicks.remove = []; showClicks();
});
$("clear-clicks").addEventListener("click", () => {
  clicks.keep = []; clicks.remove = []; showClicks(); applyEffect();
});
$("effect-result").addEventListener("click", (e) => {
  const img = e.currentTarget;
  if (!img.naturalWidth) return;
  // From the displayed size to the image's own pixels (what the API's points are in).
  const x = Math.round(e.offsetX * img.naturalWidth / img.clientWidth);
  const y = Math.round(e.offsetY * img.naturalHeight / img.clientHeight);
  (e.shiftKey ? clicks.remove : clicks.keep).push([x, y]);
  showClicks();
  applyEffect();
});

// ---- video: submit, live progress, play the result -----------------------------------------
$("submit-video").addEventListener("click", async () => {
  const file = $("video-file").files[0];
  if (!file) { fail("Pick a video first."); return; }
  const form = new FormData();
  form.append("video", file);
  const color = $("video-color").value.trim();
  if (color) form.append("bg_color", color);
  const bar = $("video-progress");
  $("video-result").hidden = true;
  try {
    const job = await (await call("/video/submit/v1", { method: "POST", body: form })).json();
    if (job.warning) notify(job.warning); else show("error", "");
    bar.hidden = false; bar.value = 0;
    for (let delay = 500; ; delay = Math.min(delay * 1.3, 3000)) {
      const resp = await call(`/video/result/${job.uuid}`);
      if (resp.status === 200) {
        $("video-result").src = URL.createObjectURL(await resp.blob());
        $("video-result").hidden = false;
        bar.value = 100;
        window.lastVideoModel = resp.headers.get("X-Model");
        $("video-status").textContent = window.lastVideoModel ? `Done (${window.lastVideoModel}).` : "Done.";
        return;
      }
      const state = await resp.json();
      if (state.total_frames) {
        bar.value = state.progress_percentage;
        $("video-status").textContent = `${state.current_frame} / ${state.total_frames} frames`;
      } else {
        $("video-status").textContent = "Queued…";
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  } catch (e) { bar.hidden = true; $("video-status").textContent = ""; fail(e.message); }
});

// ---- win rates ---------------------------------------------------------------------------
async function loadWins() {
  try {
    const stats = await (await call("/selections/stats")).json();
    const rows = stats.rows.map((r) => {
      const tr = document.createElement("tr");
      for (const v of [r.category, r.model_id, r.wins, r.offered, `${(r.win_rate * 100).toFixed(1)} %`]) {
        const td = document.createElement("td"); td.textContent = v; tr.append(td);
      }
      return tr;
    });
    $("wins").tBodies[0].replaceChildren(...rows);
  } catch (e) { fail(e.message); }
}
$("refresh-wins").addEventListener("click", loadWins);
