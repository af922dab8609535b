// The attention explorer: vanilla ES module, no build step, talks only to the server it came from.
// It asks /v1/models/{name}/predict with "attention": true and draws attention.layers, whose
// entries are (heads, T_q, T_k) weights: rows are output tokens (query_tokens), columns input
// tokens (key_tokens). Where the model has encoder self-attention it asks "explain": "rollout" too
// and offers "rollout" in the layer selector: a (T_k, T_k) map whose rows are input tokens.

const $ = (selector) => document.querySelector(selector);
const state = { answer: null, layer: "summary", head: "mean", row: 0 };
const ROLLOUT = "rollout";

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("#key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

function showError(body) {
  const box = $("#error");
  box.textContent = body ? `${body.error}: ${typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)}` : "";
  box.hidden = !body;
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: headers() });
  const body = await response.json();
  if (!response.ok) return showError(body);
  showError(null);
  const select = $("#model");
  select.replaceChildren();
  for (const m of body.models.filter((m) => m.inputs === "text" && m.attention !== false)) {  // exports keep none
    const option = new Option(`${m.name} (${m.task})`, m.name);
    select.append(option);
  }
}

async function predict(event) {
  event.preventDefault();
  const name = $("#model").value;
  const text = $("#text").value;
  if (!name || !text.trim()) return;
  $("#go").disabled = true;
  try {
    const ask = (request) => fetch(`/v1/models/${encodeURIComponent(name)}/predict`, {
      method: "POST", headers: headers(), body: JSON.stringify({ texts: [text], attention: true, ...request }),
    });
    let response = await ask({ explain: ROLLOUT });
    let body = await response.json();
    if (response.status === 422 && body.error === "cannot explain") {  // no encoder self-attention
      response = await ask({});
      body = await response.json();
    }
    if (!response.ok) return showError(body);
    showError(null);
    state.answer = body;
    state.row = 0;
    const layers = Object.keys(body.attention[0].layers);
    state.layer = layers.length ? layers[layers.length - 1] : "summary";
    state.head = "mean";
    render();
  } finally {
    $("#go").disabled = false;
  }
}

// A layer's weights as a list of heads, each (T_q, T_k); a 2-D entry is one head.
function heads(layer) {
  const att = state.answer.attention[0];
  if (layer === "summary") return [att.summary];
  if (layer === ROLLOUT) return [state.answer.rollout[0].weights];
  const w = att.layers[layer];
  return Array.isArray(w[0][0]) ? w : [w];
}

// The map shown: one head, or the mean over heads, (T_q, T_k).
export function currentMap() {
  const hs = heads(state.layer);
  if (state.head !== "mean") return hs[Number(state.head)];
  return hs[0].map((row, i) => row.map((_, j) => hs.reduce((sum, h) => sum + h[i][j], 0) / hs.length));
}

// The rows' labels: output tokens, or the input tokens for the rollout (input x input).
function queryTokens() {
  return state.layer === ROLLOUT ? state.answer.rollout[0].tokens : state.answer.attention[0].query_tokens;
}

function fillSelect(select, values, chosen) {
  select.replaceChildren(...values.map(([value, label]) => new Option(label, value, false, value === chosen)));
}

function render() {
  const { answer } = state;
  const prediction = answer.predictions[0];
  const att = answer.attention[0];
  $("#result").hidden = false;
  $("#output").textContent = prediction.output === "" ? "(empty)" : prediction.output;
  $("#score").textContent = prediction.score == null ? "" : `score ${Number(prediction.score).toFixed(3)}`;
  const probs = $("#probabilities");
  probs.hidden = !prediction.probabilities;
  if (prediction.probabilities) {
    probs.tBodies[0].replaceChildren(...Object.entries(prediction.probabilities).map(([name, p]) => {
      const tr = document.createElement("tr");
      tr.innerHTML = "<th></th><td></td>";
      tr.cells[0].textContent = name;
      tr.cells[1].textContent = `${(100 * p).toFixed(1)} %`;
      return tr;
    }));
  }
  const layers = [["summary", "the task's summary"], ...Object.keys(att.layers).map((n) => [n, n])];
  if (answer.rollout) layers.push([ROLLOUT, "rollout (encoder self-attention, all layers)"]);
  fillSelect($("#layer"), layers, state.layer);
  const nHeads = heads(state.layer).length;
  if (state.head !== "mean" && Number(state.head) >= nHeads) state.head = "mean";
  fillSelect($("#head"), [["mean", "mean over heads"], ...[...Array(nHeads).keys()].map((h) => [String(h), `head ${h}`])], state.head);
  $("#title").textContent = state.layer === ROLLOUT
    ? `attention rollout of ${answer.rollout[0].layers.join(", ")}: rows and columns are the input tokens`
    : att.title;
  const rowTokens = queryTokens();
  if (state.row >= rowTokens.length) state.row = 0;
  const queries = $("#queries");
  queries.replaceChildren(...rowTokens.map((token, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "token";
    button.textContent = token;
    button.dataset.row = String(i);
    const choose = () => { state.row = i; drawRow(); };
    button.addEventListener("mouseenter", choose);
    button.addEventListener("focus", choose);
    button.addEventListener("click", choose);
    return button;
  }));
  drawGrid();
  drawRow();
}

function shade(element, weight, max) {
  const w = max > 0 ? weight / max : 0;
  element.style.setProperty("--w", w.toFixed(3));
  element.classList.toggle("strong", w > 0.55);
  element.dataset.weight = String(weight);
}

function drawRow() {
  const att = state.answer.attention[0];
  const row = currentMap()[state.row] || [];
  const max = Math.max(0, ...row);
  for (const b of $("#queries").children) b.setAttribute("aria-pressed", String(Number(b.dataset.row) === state.row));
  $("#keys").replaceChildren(...att.key_tokens.map((token, j) => {
    const span = document.createElement("span");
    span.className = "token";
    span.textContent = token;
    shade(span, row[j] ?? 0, max);
    const label = `${token}: ${(100 * (row[j] ?? 0)).toFixed(1)} % of ${queryTokens()[state.row]}'s attention`;
    span.title = label;
    span.setAttribute("aria-label", label);
    span.setAttribute("role", "img");
    return span;
  }));
  for (const tr of $("#grid").rows) tr.classList.toggle("current", Number(tr.dataset.row) === state.row);
}

function drawGrid() {
  const att = state.answer.attention[0];
  const map = currentMap();
  const rowTokens = queryTokens();
  const grid = $("#grid");
  const head = document.createElement("tr");
  head.append(document.createElement("th"), ...att.key_tokens.map((t) => Object.assign(document.createElement("th"), { textContent: t, scope: "col" })));
  const rows = map.map((row, i) => {
    const tr = document.createElement("tr");
    tr.dataset.row = String(i);
    tr.append(Object.assign(document.createElement("th"), { textContent: rowTokens[i] ?? "", scope: "row" }));
    const max = Math.max(0, ...row);
    for (const [j, w] of row.entries()) {
      const td = document.createElement("td");
      shade(td, w, max);
      td.title = `${rowTokens[i]} → ${att.key_tokens[j]}: ${(100 * w).toFixed(1)} %`;
      tr.append(td);
    }
    return tr;
  });
  grid.replaceChildren(head, ...rows);
}

$("#ask").addEventListener("submit", predict);
$("#text").addEventListener("keydown", (e) => { if (e.key === "Enter" && e.ctrlKey) $("#ask").requestSubmit(); });
$("#reload").addEventListener("click", loadModels);
$("#layer").addEventListener("change", (e) => { state.layer = e.target.value; state.head = "mean"; render(); });
$("#head").addEventListener("change", (e) => { state.head = e.target.value; drawGrid(); drawRow(); });
loadModels();
