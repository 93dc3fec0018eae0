// relsafe's web page: search the gallery (text or image), switch the safety mode, see the
// moderation verdict of the query. Plain JS, no build step, talks only to this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, seq: 0, blobs: [] };

function headers(json) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(path, body) {
  const opts = body === undefined
    ? { headers: headers(false) }
    : { method: "POST", headers: headers(true), body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const msg = (data.error && data.error.message) || r.statusText;
    throw new Error(r.status + ": " + msg);
  }
  return data;
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

function mode() {
  return document.querySelector('input[name="safety"]:checked').value;
}

async function loadIndex() {
  try {
    const d = await api("/v1/index");
    $("index-info").textContent =
      `${d.size} ${d.modality} items, model ${d.model}, FAISS ${d.faiss.kind || "?"}`;
  } catch (e) {
    $("index-info").textContent = "index: " + e.message;
  }
}

async function thumbnail(url) {
  const r = await fetch(url, { headers: headers(false) });
  if (!r.ok) return "";
  const u = URL.createObjectURL(await r.blob());
  state.blobs.push(u);
  return u;
}

function badge(flagged) {
  const b = document.createElement("span");
  b.className = flagged ? "badge" : "badge safe";
  b.textContent = flagged ? "flagged" : "safe";
  return b;
}

async function showResults(res) {
  state.blobs.forEach((u) => URL.revokeObjectURL(u));
  state.blobs = [];
  const list = $("results");
  list.replaceChildren();
  $("reason").textContent = `mode ${res.mode}: ${res.reason}`;
  $("reason").classList.toggle("acted", !!res.acted);
  for (const h of res.hits) {
    const li = document.createElement("li");
    li.className = "hit";
    li.dataset.id = h.id;
    li.dataset.flagged = h.flagged ? "1" : "0";
    if (h.thumbnail) {
      const img = document.createElement("img");
      img.alt = h.id;
      li.append(img);
      thumbnail(h.thumbnail).then((u) => { if (u) img.src = u; });
    } else {
      const p = document.createElement("p");
      p.className = "text";
      p.textContent = h.text || h.id;
      li.append(p);
    }
    const meta = document.createElement("div");
    meta.className = "meta";
    const s = document.createElement("span");
    s.textContent = `#${h.rank} · ${h.score.toFixed(3)}`;
    s.title = `id ${h.id}, safety score ${h.safety_score.toFixed(3)}`;
    meta.append(s, badge(h.flagged));
    li.append(meta);
    list.append(li);
  }
}

function showModeration(r) {
  const v = $("moderation-verdict");
  const rs = r.relsafe;
  v.textContent = r.flagged
    ? `flagged: ${rs.category} (score ${rs.score.toFixed(3)} > ${rs.threshold.toFixed(3)})`
    : `not flagged (score ${rs.score.toFixed(3)} <= ${rs.threshold.toFixed(3)})`;
  v.classList.toggle("flagged", r.flagged);
  const rows = Object.entries(r.category_scores).sort((a, b) => b[1] - a[1]).slice(0, 8);
  const body = $("moderation-rows");
  body.replaceChildren();
  for (const [cat, score] of rows) {
    const tr = document.createElement("tr");
    if (r.categories[cat]) tr.className = "hot";
    for (const t of [cat, score.toFixed(3), r.categories[cat] ? "yes" : ""]) {
      const td = document.createElement("td");
      td.textContent = t;
      tr.append(td);
    }
    body.append(tr);
  }
  $("moderation-table").hidden = false;
}

async function run() {
  if (!state.query) return;
  const seq = ++state.seq;
  const q = state.query;
  const k = Math.max(1, Math.min(100, parseInt($("k").value, 10) || 12));
  setStatus("searching…");
  const search = q.text !== undefined ? { text: q.text } : { image: q.image };
  const input = q.text !== undefined
    ? [{ type: "text", text: q.text }]
    : [{ type: "image_url", image_url: { url: q.image } }];
  try {
    const [res, mod] = await Promise.all([
      api("/v1/search", { ...search, k, safety: mode() }),
      api("/v1/moderations", { input }),
    ]);
    if (seq !== state.seq) return;
    await showResults(res);
    showModeration(mod.results[0]);
    setStatus(`${res.hits.length} results`);
    document.body.dataset.ready = String(seq);
  } catch (e) {
    if (seq === state.seq) setStatus(e.message, true);
  }
}

function useFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image`, true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    $("query-image").src = reader.result;
    $("query-image").hidden = false;
    $("query-text").value = "";
    state.query = { image: reader.result };
    run();
  };
  reader.readAsDataURL(file);
}

$("query-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("query-text").value.trim();
  if (!text) return;
  $("query-image").hidden = true;
  state.query = { text };
  run();
});
for (const r of document.querySelectorAll('input[name="safety"]')) {
  r.addEventListener("change", run);
}
$("image-file").addEventListener("change", (ev) => useFile(ev.target.files[0]));
const zone = $("drop-zone");
zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
zone.addEventListener("dragleave", () => zone.classList.remove("over"));
zone.addEventListener("drop", (ev) => {
  ev.preventDefault();
  zone.classList.remove("over");
  useFile(ev.dataTransfer.files[0]);
});
zone.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); $("image-file").click(); }
});
$("api-key").value = sessionStorage.getItem("relsafe-api-key") || "";
$("api-key").addEventListener("change", () => {
  sessionStorage.setItem("relsafe-api-key", $("api-key").value.trim());
  loadIndex();
});
loadIndex();
