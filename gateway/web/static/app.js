// The generate page: pick what to make, see its price, submit it, and watch every job live.
// One EventSource (/api/v1/events) carries all of the user's unfinished jobs; the browser resumes
// it with Last-Event-ID after a drop. Text from the server is only ever set as textContent.
"use strict";
(() => {
  const form = document.getElementById("generate-form");
  if (!form) return;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const TERMINAL = new Set(["COMPLETED", "FAILED", "CANCELLED"]);
  const NAMES = { image: "Image", video: "Video", text: "Text", tts: "Speech", stt: "Transcription" };
  const cards = new Map();
  let capability = null;
  let models = [];
  let me = null;

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": csrf, Accept: "application/json" };
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const response = await fetch(path, { method, headers, body: payload, credentials: "same-origin" });
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (response.status === 401) window.location.assign("/login?next=/generate");
    return { ok: response.ok, status: response.status, data: data || {}, retryAfter: response.headers.get("Retry-After") };
  }

  function el(tag, attrs = {}, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- choosing what to make -------------------------------------------------------------------

  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  function select(tab, focus) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
    }
    if (focus) tab.focus();
    capability = tab.dataset.capability;
    form.setAttribute("aria-labelledby", tab.id);
    for (const part of form.querySelectorAll("[data-for]")) part.hidden = !part.dataset.for.split(" ").includes(capability);
    fillModels();
    quoteSoon();
  }
  for (const tab of tabs) {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (e) => {
      const shown = tabs.filter((t) => !t.hidden);
      const i = shown.indexOf(tab);
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: shown.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      select(shown[(next + shown.length) % shown.length], true);
    });
  }

  const tier = () => (me && me.plan ? me.plan.tier : "free");
  const allowed = (m) => m.plans.includes(tier());

  function fillModels() {
    const select = $("model");
    select.replaceChildren();
    const mine = models.filter((m) => m.capability === capability);
    const pick = mine.find((m) => allowed(m) && m.workers_online && m.default)
      || mine.find((m) => allowed(m) && m.workers_online) || mine.find(allowed);
    for (const m of mine) {
      const notes = [];
      if (!allowed(m)) notes.push(`in the ${m.plans.join(", ")} plan${m.plans.length > 1 ? "s" : ""}`);
      else if (!m.workers_online) notes.push("no worker online");
      const label = `${m.name} · from ${m.cost.default_request_tokens} tokens${notes.length ? ` (${notes.join("; ")})` : ""}`;
      const option = el("option", { value: m.name }, label);
      option.disabled = !allowed(m);
      option.selected = m === pick;
      select.append(option);
    }
    const chosen = mine.find((m) => m.name === select.value);
    $("model-note").textContent = chosen ? chosen.description || "" : "";
    const none = $("no-models");
    none.hidden = Boolean(pick);
    none.textContent = pick ? "" : `Your plan has no ${NAMES[capability].toLowerCase()} model a worker serves now.`;
    $("submit").disabled = !pick;
  }

  function request() {
    const params = { model: $("model").value };
    if (capability !== "stt") params.prompt = $("prompt").value;
    if (capability === "image" || capability === "video") params.resolution = $("resolution").value;
    if (capability === "video") params.duration_seconds = Number($("duration").value);
    if (capability === "text") params.max_tokens = Number($("max-tokens").value);
    return { capability, params };
  }

  let quoteTimer = null;
  function quoteSoon() {
    clearTimeout(quoteTimer);
    quoteTimer = setTimeout(showQuote, 250);
  }
  async function showQuote() {
    const cost = $("cost");
    if (!$("model").value) { cost.textContent = ""; return; }
    if (capability === "stt") {
      cost.textContent = "Transcription is priced by the recording's length, shown once it is uploaded.";
      return;
    }
    const body = request();
    if (!body.params.prompt) body.params.prompt = "x";
    const r = await api("POST", "/api/v1/quote", body);
    if (!r.ok) { cost.textContent = r.data.detail || "This request cannot be priced."; return; }
    const left = me && me.today.tokens_remaining !== null ? `; ${me.today.tokens_remaining} left today` : "";
    cost.textContent = `This costs at most ${r.data.cost_tokens} tokens${left}.`;
  }
  form.addEventListener("input", (e) => {
    if (e.target.id === "model") {
      const chosen = models.find((m) => m.name === e.target.value);
      $("model-note").textContent = chosen ? chosen.description || "" : "";
    }
    quoteSoon();
  });

  function refusalText(r) {
    const p = r.data;
    let text = p.detail || `Refused (${r.status}).`;
    const model = models.find((m) => m.name === $("model").value);
    if (p.code === "MODEL_NOT_ALLOWED" && model) text += ` ${model.name} is in the ${model.plans.join(", ")} plan.`;
    if (p.code === "NO_CAPABLE_WORKER") text = `No worker can run this now: ${p.detail}`;
    if (r.retryAfter && (p.code === "RATE_LIMITED" || p.code === "TOO_MANY_QUEUED_JOBS")) text += ` Try again in ${r.retryAfter} s.`;
    return text;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const refusal = $("refusal");
    refusal.hidden = true;
    const button = $("submit");
    button.disabled = true;
    try {
      const body = request();
      if (capability === "stt") {
        const file = $("audio-file").files[0];
        if (!file) throw new Error("Choose a recording to transcribe.");
        const upload = new FormData();
        upload.append("file", file);
        const stored = await api("POST", "/api/v1/uploads", upload);
        if (!stored.ok) throw new Error(refusalText(stored));
        body.params.input_upload = stored.data.upload_id;
      }
      const r = await api("POST", "/api/v1/jobs", body);
      if (!r.ok) throw new Error(refusalText(r));
      const c = card(r.data.job_id, { capability, model: body.params.model, prompt: body.params.prompt });
      c.cost.textContent = `${r.data.cost_tokens} tokens at most`;
      queued(c, r.data);
      refreshMe();
    } catch (err) {
      refusal.textContent = err.message;
      refusal.hidden = false;
    } finally {
      button.disabled = false;
    }
  });

  // --- job cards -------------------------------------------------------------------------------

  function card(id, info) {
    let c = cards.get(id);
    if (c) return c;
    const root = el("article", { class: "card", id: `job-${id}`, "aria-label": `${NAMES[info.capability] || "Job"} job` });
    c = {
      id, root, done: false,
      title: el("h3", {}, `${NAMES[info.capability] || info.capability || "Job"} · ${info.model || ""}`),
      prompt: el("p", { class: "prompt" }, info.prompt || ""),
      status: el("p", { class: "status", role: "status" }, "Submitted"),
      progress: el("progress", { max: "1", "aria-label": "Progress" }),
      partial: el("pre", { class: "partial", "aria-live": "polite" }),
      result: el("div", { class: "result-area" }),
      cost: el("p", { class: "hint" }),
      cancel: el("button", { type: "button", class: "secondary cancel" }, "Cancel"),
      link: el("a", { href: `/jobs/${id}` }, "Details and timeline"),
    };
    c.progress.hidden = true;
    c.partial.hidden = true;
    c.cancel.addEventListener("click", async () => {
      c.cancel.disabled = true;
      const r = await api("DELETE", `/api/v1/jobs/${id}`);
      if (!r.ok) { c.status.textContent = r.data.detail || "Could not cancel."; c.cancel.disabled = false; }
    });
    root.append(c.title, c.prompt, c.status, c.progress, c.partial, c.result, c.cost, c.cancel, c.link);
    $("cards").prepend(root);
    cards.set(id, c);
    if (!info.capability) fillCard(c);
    return c;
  }

  async function fillCard(c) {
    const r = await api("GET", `/api/v1/jobs/${c.id}`);
    if (!r.ok) return;
    const job = r.data;
    c.title.textContent = `${NAMES[job.capability] || job.capability} · ${job.model}`;
    c.prompt.textContent = job.params.prompt || "";
    c.cost.textContent = `${job.cost_tokens} tokens${TERMINAL.has(job.status) ? "" : " at most"}`;
    if (TERMINAL.has(job.status)) finish(c, job.status, job);
    else if (job.status === "QUEUED") queued(c, job);
  }

  function queued(c, info) {
    if (c.done) return;
    const parts = ["Queued"];
    if (info.queue_position === 0) parts.push("next in line");
    else if (info.queue_position) parts.push(`${info.queue_position} ahead`);
    if (info.estimated_time_seconds !== null && info.estimated_time_seconds !== undefined) {
      parts.push(`about ${Math.max(1, Math.round(info.estimated_time_seconds))} s`);
    }
    c.status.textContent = parts.join(" · ");
  }

  function finish(c, status, job) {
    if (c.done) return;
    c.done = true;
    c.cancel.hidden = true;
    c.progress.hidden = true;
    c.status.className = `status status-${status.toLowerCase()}`;
    c.status.textContent = { COMPLETED: "Done", FAILED: "Failed", CANCELLED: "Cancelled" }[status];
    if (status === "FAILED" && job && job.error) c.status.textContent = `Failed: ${job.error.message || job.error.code}`;
    if (status === "COMPLETED") showResult(c, job);
    refreshMe();
  }

  async function showResult(c, job) {
    if (!job || !job.artifacts) {
      const r = await api("GET", `/api/v1/jobs/${c.id}`);
      if (!r.ok) return;
      job = r.data;
    }
    c.cost.textContent = `${job.cost_tokens} tokens`;
    c.partial.hidden = true;
    c.result.replaceChildren();
    for (const a of job.artifacts) {
      const src = a.signed_url || a.url;
      let node;
      const picture = a.type === "image" || (a.type === "video" && a.content_type.startsWith("image/"));  // animated WebP
      if (picture) node = el("img", { class: "result", src, alt: `${a.type === "video" ? "Animation" : "Image"} made for: ${(job.params.prompt || "").slice(0, 200)}` });
      else if (a.type === "video") node = el("video", { class: "result", src, controls: "", "aria-label": "Generated video" });
      else if (a.type === "audio") node = el("audio", { class: "result", src, controls: "", "aria-label": "Generated speech" });
      else node = el("pre", { class: "result text" }, a.text || "");
      c.result.append(node);
    }
  }

  // --- live ------------------------------------------------------------------------------------

  function follow() {
    const live = $("live-state");
    const source = new EventSource("/api/v1/events");
    source.onopen = () => { live.textContent = "Live: jobs update as they run."; };
    source.onerror = () => { live.textContent = "Connection lost; reconnecting…"; };
    source.addEventListener("transition", (e) => {
      const d = JSON.parse(e.data);
      const c = card(d.job_id, {});
      if (d.type.startsWith("JobStarted") || d.type.startsWith("JobDispatched")) {
        if (!c.done) c.status.textContent = d.type.startsWith("JobStarted") ? "Running" : "Starting";
      }
      if (d.type.startsWith("JobRequeued")) queued(c, {});
      if (TERMINAL.has(d.status)) finish(c, d.status, d.status === "FAILED" ? { error: d.data } : null);
    });
    source.addEventListener("status", (e) => {
      const d = JSON.parse(e.data);
      const c = card(d.job_id, {});
      if (d.status === "QUEUED") queued(c, d);
      else if (d.status === "RUNNING" && !c.done && c.progress.hidden) c.status.textContent = "Running";
    });
    source.addEventListener("progress", (e) => {
      const d = JSON.parse(e.data);
      const c = card(d.job_id, {});
      if (c.done) return;
      c.status.textContent = d.message ? `Running · ${d.message}` : "Running";
      if (d.fraction !== null && d.fraction !== undefined) {
        c.progress.hidden = false;
        c.progress.value = d.fraction;
      }
      if (d.partial_text) {
        c.partial.hidden = false;
        c.partial.textContent = d.partial_text;
      }
    });
  }

  async function refreshMe() {
    const r = await api("GET", "/api/v1/user/me");
    if (r.ok) me = r.data;
  }

  async function start() {
    const [mine, list] = await Promise.all([api("GET", "/api/v1/user/me"), api("GET", "/api/v1/models")]);
    me = mine.ok ? mine.data : null;
    models = list.ok ? list.data.models : [];
    const offered = new Set(models.filter((m) => m.workers_online > 0).map((m) => m.capability));
    if (offered.size) for (const tab of tabs) tab.hidden = !offered.has(tab.dataset.capability);
    select(tabs.find((t) => !t.hidden) || tabs[0], false);
    const recent = await api("GET", "/api/v1/jobs?limit=12");
    for (const job of (recent.ok ? recent.data.jobs : []).reverse()) {
      card(job.job_id, {});
    }
    follow();
  }
  start();
})();
