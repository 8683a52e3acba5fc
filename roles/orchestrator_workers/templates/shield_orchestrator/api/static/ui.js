// The operator's console of shield-orchestrator: plain JavaScript, no build step,
// no third-party code. Everything comes from the service's own API; jobs change
// through its event stream (GET /events/stream, read with fetch() because
// EventSource cannot send the Authorization header). The queue, the workers and
// the LLM calls have no events: they are refreshed every few seconds.
//
// The token lives in sessionStorage (this tab only) and travels only in the
// Authorization header: never in an address, never in the browser's console.
"use strict";

const TOKEN_KEY = "shield-orchestrator-token";
const REFRESH_MS = 3000;
const RATE_WINDOW_MS = 60000;
const FINAL = new Set(["completed", "failed", "cancelled"]);

const state = {
  jobs: new Map(),
  selected: null,
  stream: null,
  lastEventId: null,
  timer: null,
  rates: [],
  letterTimer: null,
  deadLetters: -1,
  armed: null,
};

const $ = (id) => document.getElementById(id);

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  headers.Authorization = "Bearer " + token();
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401) {
    logout("The token was refused (401): log in again.");
    throw new Unauthorized("401");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_err) {
    body = null;
  }
  if (!response.ok) {
    const detail = body && body.detail ? body.detail : response.statusText;
    throw new Error(`HTTP ${response.status}: ${detail}`);
  }
  return body;
}

// --- formatting ----------------------------------------------------------------

function text(value) {
  return value === null || value === undefined || value === "" ? "–" : String(value);
}

function when(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 60) return `${value.toFixed(1)} s`;
  const minutes = Math.floor(value / 60);
  return `${minutes} min ${Math.round(value - minutes * 60)} s`;
}

function jobDuration(job) {
  if (job.duration_seconds !== null && job.duration_seconds !== undefined) return job.duration_seconds;
  if (!job.started_at) return null;
  const end = job.completed_at ? new Date(job.completed_at) : new Date();
  return Math.max(0, (end - new Date(job.started_at)) / 1000);
}

function cell(row, content, testid) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content);
  else td.textContent = text(content);
  if (testid) td.dataset.testid = testid;
  row.appendChild(td);
  return td;
}

function button(label, testid, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.testid = testid;
  b.addEventListener("click", onClick);
  return b;
}

// --- login ---------------------------------------------------------------------

async function login(event) {
  event.preventDefault();
  const input = $("token");
  sessionStorage.setItem(TOKEN_KEY, input.value);
  input.value = "";
  $("login-error").textContent = "";
  try {
    await api("/queue");
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("login-error").textContent = `The service did not answer: ${err.message}`;
    return;
  }
  start();
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.stream) state.stream.abort();
  state.stream = null;
  clearInterval(state.timer);
  state.timer = null;
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = typeof message === "string" ? message : "";
  $("stream-state").textContent = "not connected";
}

function start() {
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  loadJobs();
  loadDeadLetters();
  refresh();
  clearInterval(state.timer);
  state.timer = setInterval(refresh, REFRESH_MS);
  connect();
}

// --- queue, workers and LLM calls (no events: a slow refresh) -------------------------

async function refresh() {
  refreshLLM();
  try {
    const [queue, workers] = await Promise.all([api("/queue"), api("/workers")]);
    showQueue(queue);
    showWorkers(workers.workers);
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("stream-state").textContent = `refresh failed: ${err.message}`;
  }
}

async function refreshLLM() {
  try {
    showLLM(await api("/llm"));
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("llm-hosts").textContent = `LLM calls: ${err.message}`;
  }
}

// This host's slots and 429 back-off; the cluster's cap and its leases on every host.
function showLLM(llm) {
  $("llm-slots").textContent = `${llm.slots_in_use} of ${llm.slots}`;
  let cluster = "no cap";
  if (llm.cluster_max_async && llm.cluster_slots_in_use === null) cluster = `? of ${llm.cluster_max_async}`;
  else if (llm.cluster_max_async) cluster = `${llm.cluster_slots_in_use} of ${llm.cluster_max_async}`;
  $("llm-cluster").textContent = cluster;
  $("llm-rate-limited").textContent = llm.rate_limited;
  $("llm-rate-limited").title = llm.last_rate_limited_at ? `last: ${when(llm.last_rate_limited_at)}` : "";
  const backingOff = llm.backoff_seconds > 0;
  $("llm-backoff").textContent = backingOff ? `${llm.backoff_seconds.toFixed(1)} s left` : "none";
  $("llm-backoff").classList.toggle("error", backingOff);
  const hosts = Object.entries(llm.cluster_slots_by_host).map(([host, count]) => `${host} ${count}`);
  let note = hosts.length ? `Cluster slots by host: ${hosts.join(", ")}.` : "";
  if (llm.cluster_error) note = `Cluster slots unknown: ${llm.cluster_error}`;
  $("llm-hosts").textContent = note;
}

function showQueue(queue) {
  $("queue-depth").textContent = queue.queue_depth;
  $("queue-high").textContent = queue.high_priority_depth;
  $("queue-pending").textContent = queue.pending;
  $("queue-dead").textContent = queue.dead_letters;
  $("queue-rate").textContent = queue.processing_rate.toFixed(2);
  if (queue.dead_letters !== state.deadLetters) {
    state.deadLetters = queue.dead_letters;
    scheduleDeadLetters();
  }
  const now = Date.now();
  state.rates.push([now, queue.processing_rate]);
  state.rates = state.rates.filter(([at]) => at >= now - RATE_WINDOW_MS);
  drawRate(now);
}

function drawRate(now) {
  const max = Math.max(1, ...state.rates.map(([, rate]) => rate));
  const points = state.rates.map(([at, rate]) => {
    const x = 300 - ((now - at) / RATE_WINDOW_MS) * 300;
    const y = 58 - (rate / max) * 56;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  $("rate-line").setAttribute("points", points.join(" "));
  $("rate-max").textContent = max.toFixed(1);
}

function showWorkers(workers) {
  const body = $("workers-body");
  body.replaceChildren();
  for (const worker of workers) {
    const row = document.createElement("tr");
    row.dataset.testid = "worker-row";
    cell(row, worker.consumer);
    cell(row, worker.host);
    cell(row, worker.heartbeat_age_seconds === null ? "no heartbeat" : `${worker.heartbeat_age_seconds} s`);
    cell(row, worker.tasks_done);
    cell(row, worker.pending);
    cell(row, worker.state, "worker-state");
    if (!worker.alive) row.classList.add("dead");
    body.appendChild(row);
  }
}

// --- jobs -------------------------------------------------------------------------

async function loadJobs() {
  const status = $("job-filter").value;
  const query = status ? `?limit=100&status=${encodeURIComponent(status)}` : "?limit=100";
  try {
    const answer = await api("/jobs" + query);
    state.jobs.clear();
    for (const job of answer.jobs) state.jobs.set(job.job_id, job);
    renderJobs();
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("stream-state").textContent = `jobs: ${err.message}`;
  }
}

function renderJobs() {
  const filter = $("job-filter").value;
  const jobs = [...state.jobs.values()]
    .filter((job) => !filter || job.status === filter)
    .sort((a, b) => String(b.created_at).localeCompare(String(a.created_at)));
  const body = $("jobs-body");
  body.replaceChildren();
  for (const job of jobs) body.appendChild(jobRow(job));
}

// A table row for one job's data, opened with its first cell: a link-like button.
function rowOfJob(testid, jobId, openTestid) {
  const row = document.createElement("tr");
  row.dataset.testid = testid;
  row.dataset.jobId = jobId;
  const link = button(jobId.slice(0, 8), openTestid, () => openJob(jobId));
  link.className = "link";
  link.setAttribute("aria-label", `Open job ${jobId}`);
  cell(row, link);
  return row;
}

function jobRow(job) {
  const row = rowOfJob("job-row", job.job_id, "job-open");
  row.dataset.status = job.status;
  cell(row, job.status, "job-status");
  cell(row, job.priority || "normal", "job-priority");
  const percent = job.chunks_total ? (100 * job.chunks_processed) / job.chunks_total : 100;
  const bar = document.createElement("progress");
  bar.max = job.chunks_total || 1;
  bar.value = job.chunks_processed;
  bar.setAttribute("aria-label", `job ${job.job_id.slice(0, 8)} progress`);
  const label = document.createElement("span");
  label.dataset.testid = "job-percent";
  label.textContent = ` ${percent.toFixed(1)} % (${job.chunks_processed}/${job.chunks_total})`;
  const wrap = document.createElement("span");
  wrap.append(bar, label);
  cell(row, wrap);
  cell(row, job.chunks_failed, "job-failed");
  cell(row, seconds(jobDuration(job)));
  cell(row, when(job.created_at));
  return row;
}

async function fetchJob(jobId) {
  try {
    const job = await api(`/jobs/${jobId}`);
    state.jobs.set(jobId, job);
    renderJobs();
    if (state.selected === jobId) showDetail(job);
    return job;
  } catch (err) {
    return null;
  }
}

// --- job detail -------------------------------------------------------------------

async function openJob(jobId) {
  state.selected = jobId;
  $("detail-message").textContent = "";
  const job = await fetchJob(jobId);
  if (job) $("job-detail").hidden = false;
}

async function showDetail(job) {
  $("detail-id").textContent = job.job_id;
  $("detail-status").textContent = job.status;
  $("detail-priority").textContent = job.priority || "normal";
  $("detail-chunks").textContent =
    `${job.chunks_processed} processed, ${job.chunks_failed} failed, of ${job.chunks_total} (${job.percent_complete} %)` +
    (job.chunks_duplicate ? `; ${job.chunks_duplicate} already in the graph (GET /jobs/${job.job_id}/duplicates)` : "");
  $("detail-created").textContent = when(job.created_at);
  $("detail-started").textContent = when(job.started_at);
  $("detail-completed").textContent = when(job.completed_at);
  $("detail-duration").textContent = seconds(jobDuration(job));
  $("detail-error").textContent = text(job.error_message);
  $("cancel-job").disabled = FINAL.has(job.status);
  try {
    const letters = await api(`/dead-letters?job_id=${encodeURIComponent(job.job_id)}&limit=100`);
    const list = $("detail-letters");
    list.replaceChildren();
    for (const letter of letters.dead_letters) {
      const item = document.createElement("li");
      item.textContent = `chunk ${letter.chunk_index}: ${letter.error} (${letter.attempts} attempts)`;
      list.appendChild(item);
    }
    if (!letters.dead_letters.length) list.textContent = "none";
  } catch (_err) {
    $("detail-letters").textContent = "could not be read";
  }
}

async function cancelSelected() {
  const jobId = state.selected;
  if (!jobId) return;
  try {
    const answer = await api(`/jobs/${jobId}/cancel`, { method: "POST" });
    $("detail-message").textContent = answer.already_cancelled
      ? "The job was already cancelled."
      : `Cancelled. ${answer.chunks_in_lightrag} chunks already in LightRAG stay there.`;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("detail-message").textContent = err.message;
  }
  fetchJob(jobId);
}

// --- dead letters -----------------------------------------------------------------

function scheduleDeadLetters() {
  clearTimeout(state.letterTimer);
  state.letterTimer = setTimeout(loadDeadLetters, 300);
}

async function loadDeadLetters() {
  if (state.selected) fetchJob(state.selected); // its failed chunks may have changed too
  try {
    const answer = await api("/dead-letters?limit=200");
    const body = $("dlq-body");
    body.replaceChildren();
    for (const letter of answer.dead_letters) body.appendChild(letterRow(letter));
    $("replay-all").disabled = answer.count === 0;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("dlq-message").textContent = err.message;
  }
}

function letterRow(letter) {
  const row = rowOfJob("dead-letter-row", letter.job_id, "letter-job");
  row.dataset.letterId = letter.id;
  cell(row, letter.chunk_index);
  cell(row, letter.error, "letter-error");
  cell(row, letter.attempts);
  cell(row, when(letter.dead_lettered_at));
  const actions = document.createElement("span");
  const armed = state.armed === letter.id;
  actions.append(
    button("Replay", "replay-letter", () => replay({ ids: [letter.id] })),
    button(armed ? "Confirm discard" : "Discard", "discard-letter", () => discard(letter.id)),
  );
  cell(row, actions);
  return row;
}

async function replay(request) {
  try {
    const answer = await api("/dead-letters/replay", { method: "POST", body: JSON.stringify(request) });
    $("dlq-message").textContent = `Replayed ${answer.replayed} chunk(s) of ${answer.jobs.length} job(s).`;
    for (const jobId of answer.jobs) fetchJob(jobId);
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("dlq-message").textContent = err.message;
  }
  loadDeadLetters();
}

async function discard(letterId) {
  // Two clicks: the first asks (the button says so, across re-renders), the
  // second discards; no modal dialog.
  if (state.armed !== letterId) {
    state.armed = letterId;
    loadDeadLetters();
    return;
  }
  state.armed = null;
  try {
    await api(`/dead-letters/${encodeURIComponent(letterId)}`, { method: "DELETE" });
    $("dlq-message").textContent = `Discarded ${letterId}; its chunk stays failed.`;
  } catch (err) {
    if (!(err instanceof Unauthorized)) $("dlq-message").textContent = err.message;
  }
  loadDeadLetters();
}

// --- the event stream ---------------------------------------------------------------

const STATUS_OF = {
  "ingestion.queued": "queued",
  "ingestion.started": "processing",
  "ingestion.progress": "processing",
  "ingestion.completed": "completed",
  "ingestion.failed": "failed",
  "ingestion.cancelled": "cancelled",
};

function onEvent(type, data) {
  if (type === "worker.task_failed" || type === "ingestion.failed") scheduleDeadLetters();
  if (!(type in STATUS_OF) || !data.job_id) return;
  const job = state.jobs.get(data.job_id);
  if (!job || type === "ingestion.queued" || FINAL.has(STATUS_OF[type])) {
    fetchJob(data.job_id);
    return;
  }
  if (!FINAL.has(job.status) || type === "ingestion.progress") {
    job.status = STATUS_OF[type];
  }
  for (const key of ["chunks_processed", "chunks_failed", "chunks_total", "percent_complete"]) {
    if (key in data) job[key] = data[key];
  }
  if (!job.started_at) job.started_at = new Date().toISOString();
  renderJobs();
  if (state.selected === data.job_id) showDetail(job);
}

function parseFrame(frame) {
  let type = "message";
  let id = null;
  const data = [];
  for (const line of frame.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (id) state.lastEventId = id;
  if (!data.length) return;
  try {
    onEvent(type, JSON.parse(data.join("\n")));
  } catch (_err) {
    // a frame that is not JSON is not one of the service's events
  }
}

async function connect() {
  if (!token()) return;
  const controller = new AbortController();
  state.stream = controller;
  const headers = { Accept: "text/event-stream", Authorization: "Bearer " + token() };
  if (state.lastEventId) headers["Last-Event-ID"] = state.lastEventId;
  try {
    const response = await fetch("/events/stream", { headers, signal: controller.signal, cache: "no-store" });
    if (response.status === 401) {
      logout("The token was refused (401): log in again.");
      return;
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    $("stream-state").textContent = "live";
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += chunk.value.replace(/\r\n/g, "\n");
      let end = buffer.indexOf("\n\n");
      while (end >= 0) {
        parseFrame(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
        end = buffer.indexOf("\n\n");
      }
    }
    $("stream-state").textContent = "reconnecting";
  } catch (err) {
    if (controller.signal.aborted) return;
    $("stream-state").textContent = `reconnecting (${err.message})`;
  }
  if (state.stream === controller) setTimeout(connect, 2000);
}

// --- wiring -------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout(""));
  $("job-filter").addEventListener("change", loadJobs);
  $("cancel-job").addEventListener("click", cancelSelected);
  $("close-detail").addEventListener("click", () => {
    state.selected = null;
    $("job-detail").hidden = true;
  });
  $("replay-all").addEventListener("click", () => replay({ all: true }));
  if (token()) start();
});
