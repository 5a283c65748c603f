// The citizens' page: register, follow the status, cancel, recover a lost link.
// Plain JavaScript, no build step. Writes go to this page's origin (the ingest edge); reads
// (availability, status) go to the read API named by /config.json.
"use strict";
(function () {
  const STORE_REGISTRATION = "reg.registration"; // {id, token}
  const STORE_PENDING = "reg.pending"; // {key, body}: the submission being sent, its Idempotency-Key
  const STORE_LANGUAGE = "reg.language";
  const STORE_REGION = "reg.region";
  const STORE_TICKET = "reg.ticket"; // {region, ticket}: the waiting-room ticket, kept across reloads
  const MIN_AVAILABILITY_POLL_MS = 2000; // and never faster than the answer's max-age
  const ENDED = ["rejected", "cancelled"];

  const $ = (id) => document.getElementById(id);
  const state = {
    language: "en",
    readApi: "",
    availability: { rows: null, etag: null, timer: null, at: null },
    registration: null, // {id, token}
    record: null, // the read API's last answer
    statusTimer: null,
    statusProblem: null,
    // The region's waiting room, when it is on: the ticket, the edge's last answer about it,
    // and whether a registration waits to be sent the moment the ticket is admitted.
    queue: { region: null, ticket: null, view: null, timer: null, submitWhenAdmitted: false },
  };

  // --- storage (private browsing may refuse it: the page still works for this visit) ---
  function load(key) {
    try { return JSON.parse(localStorage.getItem(key)); } catch (_) { return null; }
  }
  function save(key, value) {
    try {
      if (value === null) localStorage.removeItem(key); else localStorage.setItem(key, JSON.stringify(value));
    } catch (_) { /* not kept across reloads */ }
  }

  // --- language ---
  function words() { return window.I18N[state.language]; }
  function t(path, values) {
    let v = path.split(".").reduce((o, k) => (o == null ? o : o[k]), words());
    if (v == null) v = path.split(".").reduce((o, k) => (o == null ? o : o[k]), window.I18N.en);
    return String(v == null ? path : v).replace(/\{(\w+)\}/g, (_, k) => (values && k in values ? values[k] : ""));
  }
  function initialLanguage() {
    const stored = load(STORE_LANGUAGE);
    if (stored && window.I18N[stored]) return stored;
    const preferred = (navigator.languages && navigator.languages[0]) || navigator.language || "en";
    return preferred.toLowerCase().startsWith("pl") ? "pl" : "en";
  }
  function applyLanguage(language) {
    state.language = language;
    document.documentElement.lang = language;
    $("language").value = language;
    document.title = t("title");
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    renderAvailability();
    renderRecord();
    renderQueue();
  }

  // --- formatting ---
  function placeName(slug) {
    return slug.split("-").map((w) => w.charAt(0).toUpperCase() + w.slice(1)).join(" ");
  }
  function formatDate(iso) {
    const d = new Date(iso + "T12:00:00Z");
    if (isNaN(d)) return iso;
    return new Intl.DateTimeFormat(state.language, { weekday: "short", day: "numeric", month: "long", year: "numeric", timeZone: "UTC" }).format(d);
  }
  function maxAgeMs(response) {
    const m = /max-age=(\d+)/.exec(response.headers.get("Cache-Control") || "");
    return m ? Number(m[1]) * 1000 : 0;
  }
  function retryAfterMs(response, fallback) {
    const s = Number(response.headers.get("Retry-After"));
    return Number.isFinite(s) && s > 0 ? s * 1000 : fallback;
  }

  // --- availability: one shared query for every citizen (one cache entry), polled no faster
  // than its max-age, revalidated with If-None-Match (a 304 keeps what we have) ---
  async function refreshAvailability() {
    clearTimeout(state.availability.timer);
    let wait = MIN_AVAILABILITY_POLL_MS;
    if (document.hidden) {
      state.availability.timer = null; // resumed on visibilitychange
      return;
    }
    try {
      const headers = {};
      if (state.availability.etag) headers["If-None-Match"] = state.availability.etag;
      const response = await fetch(state.readApi + "/v1/availability", { headers, cache: "no-store", mode: "cors" });
      wait = Math.max(wait, maxAgeMs(response));
      if (response.status === 200) {
        state.availability.rows = await response.json();
        state.availability.etag = response.headers.get("ETag");
        state.availability.problem = false;
      } else if (response.status === 304) {
        state.availability.problem = false;
      } else {
        state.availability.problem = true;
        wait = Math.max(wait, retryAfterMs(response, 5000));
      }
    } catch (_) {
      state.availability.problem = true;
      wait = 5000;
    }
    state.availability.at = new Date();
    renderAvailability();
    state.availability.timer = setTimeout(refreshAvailability, wait);
  }

  function renderAvailability() {
    const rows = state.availability.rows;
    const status = $("slots-status");
    if (!rows) {
      status.textContent = state.availability.problem ? t("slots_unavailable") : t("slots_loading");
      return;
    }
    const regionSelect = $("region");
    const regions = [...new Set(rows.map((r) => r.region))].sort();
    const current = regionSelect.value || load(STORE_REGION) || regions[0] || "";
    const known = [...regionSelect.options].map((o) => o.value).join(",");
    if (known !== regions.join(",")) {
      regionSelect.replaceChildren(...regions.map((r) => new Option(placeName(r), r)));
    }
    regionSelect.value = regions.includes(current) ? current : regions[0] || "";
    if (!state.registration) ensureQueue(regionSelect.value);
    const slots = rows
      .filter((r) => r.region === regionSelect.value)
      .sort((a, b) => (a.location + a.date).localeCompare(b.location + b.date));
    const list = $("slot-list");
    const keys = slots.map((s) => s.location + "|" + s.date);
    const checked = list.querySelector("input:checked");
    if ([...list.querySelectorAll("input")].map((i) => i.value).join(",") !== keys.join(",")) {
      list.replaceChildren(...slots.map(slotElement));
      if (checked) {
        const again = [...list.querySelectorAll("input")].find((i) => i.value === checked.value);
        if (again) again.checked = true;
      }
    }
    // Only the words change in place: focus and selection stay where the citizen left them.
    slots.forEach((s) => {
      const label = list.querySelector('[data-slot="' + CSS.escape(s.location + "|" + s.date) + '"]');
      label.classList.toggle("full", s.remaining <= 0);
      label.querySelector(".where").textContent = placeName(s.location) + ", " + formatDate(s.date);
      label.querySelector(".remaining").textContent =
        s.remaining > 0 ? t("slot_free", { remaining: s.remaining, capacity: s.capacity }) : t("slot_full");
      label.querySelector(".remaining").dataset.remaining = s.remaining;
      const waiting = label.querySelector(".waiting");
      waiting.textContent = s.waiting > 0 ? " · " + t("slot_waiting", { waiting: s.waiting }) : "";
      waiting.dataset.waiting = s.waiting;
    });
    if (!slots.length) status.textContent = t("slots_none");
    else if (state.availability.problem) status.textContent = t("slots_unavailable");
    else status.textContent = t("slots_updated", { time: state.availability.at.toLocaleTimeString(state.language) });
  }

  function slotElement(s) {
    const key = s.location + "|" + s.date;
    const label = document.createElement("label");
    label.className = "slot";
    label.dataset.slot = key;
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "slot";
    input.value = key;
    const text = document.createElement("span");
    const where = document.createElement("span");
    where.className = "where";
    const counts = document.createElement("span");
    counts.className = "counts";
    const remaining = document.createElement("span");
    remaining.className = "remaining";
    const waiting = document.createElement("span");
    waiting.className = "waiting";
    counts.append(remaining, waiting);
    text.append(where, counts);
    label.append(input, text);
    return label;
  }

  // --- field errors next to their field ---
  function clearErrors(form) {
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    form.querySelectorAll(".error").forEach((el) => { el.textContent = ""; });
  }
  function fieldError(prefix, field, message) {
    const fieldIds = { location: "slot", date: "slot" };
    const name = fieldIds[field] || field;
    const input = name === "slot" ? $("slots") : $(prefix + name);
    const error = name === "slot" ? $("slot-error") : $(prefix + name + "-error");
    if (!input || !error) return false;
    const localized = state.language === "en" ? message : (words().fields && words().fields[name]) || t("errors.field");
    error.textContent = localized || t("errors.field");
    if (name === "slot") $("slot-list").querySelectorAll("input").forEach((i) => i.setAttribute("aria-invalid", "true"));
    else input.setAttribute("aria-invalid", "true");
    (name === "slot" ? $("slot-list").querySelector("input") || $("region") : input).focus();
    return true;
  }
  function showApiError(formError, prefix, status, body, response) {
    const e = (body && body.error) || {};
    if (status === 400 && e.field && fieldError(prefix, e.field, e.message)) return;
    let message;
    if (status === 429) message = t("errors.rate_limited", { seconds: Math.ceil(retryAfterMs(response, 60000) / 1000) });
    else if (status === 503) message = t("errors.busy");
    else if (status === 403 && e.code === "window_closed") message = t("errors.window_closed");
    else if (status === 409 && e.code === "already_registered") message = t("errors.already_registered");
    else if (status === 409) message = t("errors.request_in_flight");
    else message = t("errors.generic", { message: e.message || "HTTP " + status });
    formError.textContent = message;
  }

  // --- the waiting room: a ticket taken when the region's room is on, its place polled gently
  // (the edge's poll_after_seconds, with jitter), kept across reloads; once admitted, a
  // registration the citizen already sent goes by itself ---
  function ensureQueue(region) {
    if (!region || state.queue.region === region) return;
    state.queue.region = region;
    state.queue.view = null;
    const stored = load(STORE_TICKET);
    state.queue.ticket = stored && stored.region === region ? stored.ticket : null;
    renderQueue();
    refreshQueue();
  }
  function scheduleQueue(ms) {
    clearTimeout(state.queue.timer);
    state.queue.timer = setTimeout(refreshQueue, ms * (0.8 + Math.random() * 0.4));
  }
  function dropTicket() {
    state.queue.ticket = null;
    save(STORE_TICKET, null);
  }
  async function refreshQueue() {
    clearTimeout(state.queue.timer);
    const region = state.queue.region;
    if (!region) return;
    let response;
    try {
      response = state.queue.ticket
        ? await fetch("/v1/queue/" + encodeURIComponent(state.queue.ticket), { cache: "no-store" })
        : await fetch("/v1/queue", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ region }) });
    } catch (_) {
      scheduleQueue(5000);
      return;
    }
    if (region !== state.queue.region) return; // the citizen chose another region meanwhile
    const view = await response.json().catch(() => null);
    if (response.status === 403 && state.queue.ticket) {
      dropTicket(); // not a ticket of this server (any more): take a new one
      scheduleQueue(1000);
      return;
    }
    if (!response.ok || !view) {
      scheduleQueue(retryAfterMs(response, 5000));
      return;
    }
    applyQueue(view);
  }
  function applyQueue(view) {
    if (!view.active) {
      dropTicket();
      state.queue.view = null;
      renderQueue();
      if (state.queue.submitWhenAdmitted) { state.queue.submitWhenAdmitted = false; $("register").requestSubmit(); }
      scheduleQueue(30000); // a room may be turned on later
      return;
    }
    if (view.state === "expired") {
      dropTicket();
      state.queue.view = { ...view, state: "expired" };
      renderQueue();
      scheduleQueue(1000);
      return;
    }
    state.queue.ticket = view.ticket;
    save(STORE_TICKET, { region: view.region, ticket: view.ticket });
    state.queue.view = view;
    renderQueue();
    if (view.state === "admitted") {
      if (state.queue.submitWhenAdmitted) {
        state.queue.submitWhenAdmitted = false;
        $("register").requestSubmit();
      }
      scheduleQueue(30000); // to notice an admission that lapses unused
      return;
    }
    scheduleQueue(Math.max(1, view.poll_after_seconds || 5) * 1000);
  }
  function renderQueue() {
    const view = state.queue.view;
    const box = $("queue");
    box.hidden = !view || !!state.registration;
    if (!view) return;
    box.dataset.state = view.state;
    let text;
    if (view.state === "admitted") text = t("queue.admitted");
    else if (view.state === "expired") text = t("queue.expired");
    else {
      const minutes = Math.ceil((view.estimated_wait_seconds || 0) / 60);
      text = view.position > 0 && minutes > 0 ? t("queue.waiting", { ahead: view.position, minutes }) : t("queue.front");
      if (state.queue.submitWhenAdmitted) text += " " + t("queue.will_submit");
    }
    $("queue-text").textContent = text;
  }
  function admittedTicket(region) {
    const view = state.queue.view;
    return view && view.region === region && state.queue.ticket ? state.queue.ticket : null;
  }

  // --- submission ---
  function randomKey() {
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  }
  function submissionBody() {
    const value = (id) => $(id).value.trim();
    const slot = ($("slot-list").querySelector("input:checked") || {}).value || "";
    const [location, date] = slot ? slot.split("|") : ["", ""];
    const body = {
      national_id: value("national_id"),
      full_name: value("full_name"),
      birth_date: value("birth_date"),
      region: $("region").value,
      location,
      date,
      language: state.language,
    };
    if (value("email")) body.email = value("email");
    if (value("phone")) body.phone = value("phone");
    return body;
  }

  async function submit(event) {
    event.preventDefault();
    const form = $("register");
    clearErrors(form);
    const body = submissionBody();
    if (!body.location) {
      fieldError("", "location", t("errors.choose_slot"));
      $("slot-error").textContent = t("errors.choose_slot");
      return;
    }
    const json = JSON.stringify(body);
    // The same submission sent again (a retry, a reload, a second click) keeps its key, so
    // the edge answers with the first answer instead of a second registration.
    let pending = load(STORE_PENDING);
    if (!pending || pending.body !== json) {
      pending = { key: randomKey(), body: json };
      save(STORE_PENDING, pending);
    }
    const button = $("submit");
    button.disabled = true;
    button.textContent = t("submitting");
    try {
      for (let attempt = 1; ; attempt++) {
        let response;
        try {
          const headers = { "Content-Type": "application/json", "Idempotency-Key": pending.key };
          const ticket = admittedTicket(body.region);
          if (ticket) headers["Waiting-Room-Ticket"] = ticket;
          response = await fetch("/v1/registrations", { method: "POST", headers, body: json });
        } catch (_) {
          if (attempt < 3) { $("form-error").textContent = t("retrying"); await delay(2000); continue; }
          $("form-error").textContent = t("errors.network");
          return;
        }
        const answer = await response.json().catch(() => null);
        if (response.status === 202 && answer) {
          save(STORE_PENDING, null);
          if (admittedTicket(body.region)) { dropTicket(); state.queue.view = null; renderQueue(); }
          $("form-error").textContent = "";
          adopt({ id: answer.registration_id, token: answer.token });
          return;
        }
        const code = answer && answer.error && answer.error.code;
        // The waiting room: not this ticket's turn yet, or no (valid) ticket: the registration
        // goes by itself once admitted.
        if (code === "not_admitted" || code === "ticket_required" || code === "ticket_expired" || code === "ticket_invalid") {
          if (code !== "not_admitted") dropTicket();
          state.queue.submitWhenAdmitted = true;
          $("form-error").textContent = "";
          if (code === "not_admitted") renderQueue();
          else { state.queue.region = null; ensureQueue(body.region); }
          return;
        }
        if (response.status === 503 && attempt < 3 && (code === "outcome_unknown" || code === "unavailable" || code === "overloaded")) {
          $("form-error").textContent = t("retrying");
          await delay(retryAfterMs(response, 1000));
          continue;
        }
        showApiError($("form-error"), "", response.status, answer, response);
        return;
      }
    } finally {
      button.disabled = false;
      button.textContent = t("submit");
    }
  }
  function delay(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // --- the registration: stored on this device, its status polled from the read API ---
  function adopt(registration) {
    state.registration = registration;
    state.record = null;
    state.statusProblem = null;
    state.cancelling = false;
    save(STORE_REGISTRATION, registration);
    showRegistration();
    pollStatus();
  }
  function forget() {
    clearTimeout(state.statusTimer);
    state.registration = null;
    state.record = null;
    state.cancelling = false;
    save(STORE_REGISTRATION, null);
    showRegistration();
  }
  function showRegistration() {
    const has = !!state.registration;
    $("registration").hidden = !has;
    renderQueue();
    const ended = has && state.record && ENDED.includes(state.record.status);
    $("register").hidden = has && !ended && state.statusProblem !== "invalid";
    renderRecord();
  }

  function statusDelay(status) {
    if (state.cancelling) return 1000;
    if (status === "received" || status === "reserved" || !status) return 1500;
    if (status === "waitlisted" || status === "manual_review") return 10000;
    return 30000; // confirmed: stays so unless the citizen cancels (which polls again)
  }

  async function pollStatus() {
    clearTimeout(state.statusTimer);
    const registration = state.registration;
    if (!registration) return;
    if (document.hidden) { state.statusTimer = null; return; }
    let wait = statusDelay(state.record && state.record.status);
    try {
      const response = await fetch(
        state.readApi + "/v1/registrations/" + encodeURIComponent(registration.id),
        { headers: { Authorization: "Bearer " + registration.token }, cache: "no-store", mode: "cors" },
      );
      if (registration !== state.registration) return; // forgotten or replaced meanwhile
      if (response.status === 200) {
        state.record = await response.json();
        state.statusProblem = null;
        if (ENDED.includes(state.record.status)) state.cancelling = false;
        wait = statusDelay(state.record.status);
      } else if (response.status === 404) {
        state.statusProblem = "invalid";
        wait = null;
      } else {
        state.statusProblem = "unavailable";
        wait = Math.max(wait, retryAfterMs(response, 5000));
      }
    } catch (_) {
      state.statusProblem = "unavailable";
      wait = 5000;
    }
    showRegistration();
    if (wait !== null && !(state.record && ENDED.includes(state.record.status))) {
      state.statusTimer = setTimeout(pollStatus, wait);
    }
  }

  function statusSentence(record) {
    if (record.status === "rejected") {
      const reasons = words().reasons;
      return t("status.rejected", { reason: reasons[record.reason] || reasons.other });
    }
    if (record.status === "waitlisted") return t("status.waitlisted", { position: record.position });
    return t("status." + record.status);
  }

  function renderRecord() {
    const section = $("registration");
    const registration = state.registration;
    if (!registration) return;
    const record = state.record;
    let sentence;
    // Only the read API's word counts: "confirmed" is shown only once it says confirmed.
    if (state.statusProblem === "invalid") sentence = t("link_invalid");
    else if (state.cancelling) sentence = t("cancel_sent");
    else if (record) sentence = statusSentence(record);
    else sentence = t("status_checking");
    if ($("status").textContent !== sentence) $("status").textContent = sentence; // the live region speaks only on change
    section.dataset.status = state.statusProblem === "invalid" ? "invalid" : (record ? record.status : "pending");
    $("status-error").textContent = state.statusProblem === "unavailable" ? t("status_unavailable") : "";
    $("status-id").textContent = registration.id;
    $("status-place").textContent = record && record.location ? placeName(record.location) + " (" + placeName(record.region) + ")" : "…";
    $("status-date").textContent = record && record.date ? formatDate(record.date) : "…";
    const ended = record && ENDED.includes(record.status);
    $("cancel").hidden = !!ended || state.statusProblem === "invalid" || !$("cancel-confirm").hidden;
    if (ended) $("cancel-confirm").hidden = true;
    $("again").hidden = !ended;
  }

  async function cancel() {
    const registration = state.registration;
    if (!registration) return;
    $("cancel-confirm").hidden = true;
    $("status-error").textContent = "";
    try {
      const response = await fetch("/v1/registrations/" + encodeURIComponent(registration.id), {
        method: "DELETE",
        headers: { Authorization: "Bearer " + registration.token },
      });
      if (response.status === 202) {
        state.cancelling = true;
        clearTimeout(state.statusTimer);
        state.statusTimer = setTimeout(pollStatus, 1000);
      } else {
        const answer = await response.json().catch(() => null);
        showApiError($("status-error"), "", response.status, answer, response);
      }
    } catch (_) {
      $("status-error").textContent = t("errors.network");
    }
    renderRecord();
    $("status").focus();
  }

  // --- lost link ---
  async function recover(event) {
    event.preventDefault();
    const form = $("recover");
    clearErrors(form);
    $("recover-result").textContent = "";
    const body = {
      national_id: $("recover-national_id").value.trim(),
      birth_date: $("recover-birth_date").value.trim(),
    };
    $("recover-submit").disabled = true;
    try {
      const response = await fetch("/v1/registrations/recover", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json().catch(() => null);
      if (response.status === 202) $("recover-result").textContent = t("recover_sent");
      else showApiError($("recover-error"), "recover-", response.status, answer, response);
    } catch (_) {
      $("recover-error").textContent = t("errors.network");
    } finally {
      $("recover-submit").disabled = false;
    }
  }

  // --- a status link: <page>#registration=<id>&token=<token>. Kept, then taken out of the
  // address bar (and so out of the history and of bookmarks) ---
  function readFragment() {
    if (!location.hash) return;
    const params = new URLSearchParams(location.hash.slice(1));
    const id = params.get("registration");
    const token = params.get("token");
    if (!id || !token) return;
    history.replaceState(null, "", location.pathname + location.search);
    adopt({ id, token });
  }

  async function start() {
    $("status").tabIndex = -1;
    applyLanguage(initialLanguage());
    $("language").addEventListener("change", (e) => {
      save(STORE_LANGUAGE, e.target.value);
      applyLanguage(e.target.value);
    });
    $("region").addEventListener("change", () => {
      save(STORE_REGION, $("region").value);
      $("slot-list").replaceChildren();
      renderAvailability();
    });
    $("register").addEventListener("submit", submit);
    $("recover").addEventListener("submit", recover);
    $("cancel").addEventListener("click", () => {
      $("cancel-confirm").hidden = false;
      $("cancel").hidden = true;
      $("cancel-no").focus();
    });
    $("cancel-no").addEventListener("click", () => {
      $("cancel-confirm").hidden = true;
      $("cancel").hidden = false;
      $("cancel").focus();
    });
    $("cancel-yes").addEventListener("click", cancel);
    $("forget").addEventListener("click", forget);
    $("again").addEventListener("click", () => { forget(); $("national_id").focus(); });
    window.addEventListener("hashchange", readFragment);
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) return;
      if (!state.availability.timer) refreshAvailability();
      if (state.registration && !state.statusTimer) pollStatus();
    });

    try {
      const config = await (await fetch("/config.json", { cache: "no-cache" })).json();
      state.readApi = String(config.read_api_url || "").replace(/\/+$/, "");
    } catch (_) {
      state.readApi = "";
    }
    const stored = load(STORE_REGISTRATION);
    if (location.hash) readFragment();
    else if (stored && stored.id && stored.token) adopt(stored);
    refreshAvailability();
    document.body.dataset.ready = "true";
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
