// Reviewer page. Example text is untrusted: everything from the server goes into the DOM through
// textContent / createElement, never innerHTML, so a <script> in the data shows as text.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  // Placeholders the PII stage writes: <PERSON>, <EMAIL_ADDRESS>, <PERSON:3f2a9c0d1e4b>.
  const PII = /<[A-Z][A-Z0-9_]{1,63}(?::[0-9a-f]{6,64})?>/g;

  const state = { item: null, skip: [], mode: "view", reasonFor: null, reasonPick: 0, renewTimer: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c == null) continue;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }

  // Marks placeholders found by pattern plus the spans the PII stage reports for this field (a
  // surrogate or mask does not look like a placeholder, but its finding says where it is).
  function textWithPii(text, spans) {
    text = String(text);
    const ranges = [];
    for (const f of spans || []) {
      const a = f.scrubbed_start, b = f.scrubbed_end;
      if (Number.isInteger(a) && Number.isInteger(b) && a >= 0 && b > a && b <= text.length) ranges.push([a, b, f.entity_type]);
    }
    for (const m of text.matchAll(PII)) ranges.push([m.index, m.index + m[0].length, "PII placeholder"]);
    ranges.sort((x, y) => x[0] - y[0] || y[1] - x[1]);
    const frag = document.createDocumentFragment();
    let last = 0;
    for (const [a, b, label] of ranges) {
      if (a < last) continue;  // overlaps one already marked
      if (a > last) frag.appendChild(document.createTextNode(text.slice(last, a)));
      frag.appendChild(el("mark", { class: "pii", title: label || "PII" }, text.slice(a, b)));
      last = b;
    }
    if (last < text.length) frag.appendChild(document.createTextNode(text.slice(last)));
    return frag;
  }

  function say(msg, kind) {
    const box = $("message");
    box.textContent = msg;
    box.className = "message " + (kind || "info");
    box.hidden = !msg;
  }

  async function call(method, url, body) {
    const opts = { method, headers: { "Accept": "application/json" }, credentials: "same-origin" };
    if (method !== "GET") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = csrf;
      opts.body = JSON.stringify(body || {});
    }
    const r = await fetch(url, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401) { window.location = "/review"; throw new Error("signed out"); }
    if (!r.ok) {
      const err = (data && data.error) || { code: "error", message: "HTTP " + r.status };
      const e = new Error(err.message); e.code = err.code; e.status = r.status; e.details = err.details;
      throw e;
    }
    return data;
  }

  function dataset() { return $("dataset").value; }

  function showProgress(p) {
    if (!p) return;
    const pct = p.total ? Math.round(100 * p.done / p.total) : 0;
    $("progress-fill").style.width = pct + "%";
    $("progress-text").textContent =
      `you: ${p.mine} · pending ${p.pending} · approved ${p.approved} · rejected ${p.rejected} · ${pct}% done`;
  }

  function renderContent(content, findings) {
    const box = $("content");
    box.replaceChildren();
    const spans = (path) => (findings || []).filter((f) => (f.field_path || f.field) === path);
    if (Array.isArray(content.messages)) {
      content.messages.forEach((m, i) => {
        box.appendChild(el("div", { class: "msg " + m.role }, el("div", { class: "label" }, m.role),
          el("div", { class: "text" }, textWithPii(m.content, spans(`messages[${i}].content`)))));
      });
      return;
    }
    if (Array.isArray(content.prompt)) {
      content.prompt.forEach((m, i) => {
        box.appendChild(el("div", { class: "msg " + m.role }, el("div", { class: "label" }, m.role),
          el("div", { class: "text" }, textWithPii(m.content, spans(`prompt[${i}].content`)))));
      });
    }
    for (const key of ["instruction", "input", "output", "prompt", "completion", "chosen", "rejected"]) {
      if (key in content && !(key === "prompt" && Array.isArray(content.prompt))) {
        box.appendChild(el("div", { class: "field" }, el("div", { class: "label" }, key),
          el("div", { class: "text" }, textWithPii(content[key] || "", spans(key)))));
      }
    }
  }

  // Preference items: the prompt, then the two answers side by side, blind (A left, B right, in the order
  // the server drew for this reviewer). Which one is stored as chosen is not on the page.
  function renderPairwise(pw) {
    const box = $("content");
    box.replaceChildren();
    const turns = Array.isArray(pw.prompt) ? pw.prompt : [{ role: "user", content: pw.prompt }];
    const prompt = el("div", { class: "pair-prompt", "data-testid": "pair-prompt" });
    for (const m of turns) {
      prompt.appendChild(el("div", { class: "msg " + m.role }, el("div", { class: "label" }, m.role),
        el("div", { class: "text" }, textWithPii(m.content, []))));
    }
    box.appendChild(prompt);
    const side = (name, text) => el("div", { class: "answer", "data-testid": "answer-" + name },
      el("div", { class: "label" }, name === "a" ? "A (left)" : "B (right)"),
      el("div", { class: "text" }, textWithPii(text, [])));
    box.appendChild(el("div", { class: "pair" }, side("a", pw.a), side("b", pw.b)));
  }

  function listInto(id, items, fmt) {
    const ul = $(id);
    ul.replaceChildren();
    if (!items || !items.length) { ul.appendChild(el("li", { class: "muted" }, "none")); return; }
    for (const it of items) ul.appendChild(fmt(it));
  }

  function render(item) {
    state.item = item;
    state.mode = "view";
    $("editor").hidden = true; $("reason").hidden = true; $("notice").hidden = true;
    if (!item) {
      $("item-body").hidden = true; $("empty").hidden = false;
      return;
    }
    $("empty").hidden = true; $("item-body").hidden = false;
    const ex = item.example;
    const rev = ex.revision || {};
    const review = ex.review || {};
    $("status").textContent = ex.status.replace("_", " ");
    $("status").className = "pill " + ex.status;
    $("example-id").textContent = ex.id;
    $("revision").textContent = `revision ${rev.seq} (${rev.reason}) by ${rev.author}`;
    $("approvals").textContent = `${review.approvals || 0} / ${review.required_approvals || 1} approvals`;
    $("lease").textContent = item.lease_expires_at
      ? "lease until " + new Date(item.lease_expires_at).toLocaleTimeString() : "";
    const pairwise = Boolean(item.pairwise);
    if (pairwise) renderPairwise(item.pairwise); else renderContent(rev.content || {}, ex.pii_findings);
    $("pair-actions").hidden = !pairwise;
    $("act-approve").hidden = pairwise;
    if (rev.reason === "reviewer_edit" || ex.status !== "pending_review") {
      const n = $("notice");
      n.hidden = false;
      n.textContent = ex.status !== "pending_review"
        ? `This example is ${ex.status.replace("_", " ")}${ex.stage ? " (pipeline: " + ex.stage + ")" : ""}.`
        : `Edited by ${rev.author}; with four eyes on, someone other than the editor must approve it.`;
    }
    listInto("pii", ex.pii_findings, (f) => el("li", {},
      el("mark", { class: "pii" }, f.entity_type || f.type || "PII"), " ",
      el("span", { class: "muted" }, [f.field_path || f.field || "", f.score != null ? "score " + Number(f.score).toFixed(2) : "",
        f.operator || "", f.verdict || ""].filter(Boolean).join(" · "))));
    listInto("flags", ex.quality_flags, (f) => el("li", {}, el("code", {}, f.code), " ",
      el("span", { class: "muted" }, [f.field, f.message].filter(Boolean).join(": "))));
    // Duplicate links within the dataset, then overlaps with evaluation sets (an example that holds an
    // evaluation item stays out of snapshots unless a curator allows it; the reviewer should know).
    const evalMatches = ((ex.dedup || {}).eval_matches || []).map((m) => ({ ...m, eval: true }));
    listInto("dups", [...(ex.duplicates || []), ...evalMatches], (d) => d.eval
      ? el("li", { class: d.allowed ? "" : "warn", "data-testid": "eval-match" },
        el("strong", {}, "evaluation set"), " ",
        el("span", { class: "muted" }, [d.method === "containment" ? "contains / contained" : "near copy",
          `${Math.round(100 * d.similarity)}%`, d.allowed ? "allowed by a curator" : "left out of snapshots"].join(" · ")))
      : el("li", {},
        el("a", { href: "/review?dataset=" + encodeURIComponent(ex.dataset_id) + "#" + d.example_id, class: "mono",
          "data-example": d.example_id }, d.example_id.slice(0, 8)),
        " ", el("span", { class: "muted" }, `${d.relation} · ${d.method} · ${Math.round(100 * d.similarity)}%`)));
    listInto("suggestions", ex.suggestions, (s) => el("li", {},
      el("strong", {}, s.label || "—"), s.score != null ? ` (${Number(s.score).toFixed(2)})` : "", " ",
      el("span", { class: "muted" }, [s.model || s.source, s.reason_code, s.comment].filter(Boolean).join(" · "))));
    listInto("decisions", (review.decisions || []).filter((d) => d.current), (d) => el("li", {},
      el("span", { class: "pill " + d.decision }, d.decision.replace("_", " ")), " ",
      el("span", { class: "muted" }, [d.reviewer, d.reason_code, d.comment].filter(Boolean).join(" · "))));
    const dl = $("provenance");
    dl.replaceChildren();
    const p = ex.provenance || {};
    for (const k of ["source", "source_ref", "license", "legal_basis", "collected_at", "ingested_by"]) {
      if (p[k]) { dl.appendChild(el("dt", {}, k.replace("_", " "))); dl.appendChild(el("dd", {}, String(p[k]))); }
    }
  }

  async function next() {
    say("");
    try {
      const q = new URLSearchParams({ dataset: dataset() });
      if (state.skip.length) q.set("skip", state.skip.slice(-150).join(","));
      const data = await call("GET", "/review/api/next?" + q.toString());
      render(data.item);
      showProgress(data.progress);
    } catch (e) { say(e.message, "error"); }
  }

  async function open(exampleId) {
    const data = await call("GET", "/review/api/examples/" + encodeURIComponent(exampleId));
    render(data.item);
    showProgress(data.progress);
  }

  async function decide(decision, reasonCode, comment) {
    const item = state.item;
    if (!item) return;
    try {
      const out = await call("POST", `/review/api/examples/${item.example_id}/decision`, {
        decision, revision_id: item.example.revision.id, reason_code: reasonCode || null, comment: comment || null,
      });
      const verb = { approve: "Approved", reject: "Rejected", request_changes: "Changes requested" }[decision];
      await next();
      const x = out.example;
      const tally = x.status === "pending_review" ? ` (${x.approvals}/${x.required_approvals} approvals)` : "";
      say(`${verb}: ${item.example_id.slice(0, 8)} → ${x.escalated ? "escalated to an admin" : x.status.replace("_", " ")}${tally}`, "ok");
    } catch (e) {
      say(e.code === "four_eyes" ? "Four eyes: " + e.message : e.message, "error");
    }
  }

  const PICK_TITLES = { a: "A (left) is better — why?", b: "B (right) is better — why?",
    tie: "A tie — why?", both_bad: "Both are bad — why?" };

  function openReason(decision) {
    if (!state.item) return;
    const pick = decision.startsWith("pick:") ? decision.slice(5) : null;
    if (pick && !state.item.pairwise) return;
    state.mode = "reason"; state.reasonFor = decision; state.reasonPick = 0;
    const codes = pick ? state.item.pairwise.reason_codes : (state.item.example.review || {}).reason_codes || [];
    $("reason-title").textContent = pick ? PICK_TITLES[pick]
      : decision === "reject" ? "Reject — why?" : "Request changes — why?";
    const ol = $("reason-list");
    ol.replaceChildren();
    codes.forEach((c, i) => {
      const li = el("li", { "data-code": c, "data-testid": "reason-" + c, tabindex: "0" },
        el("kbd", {}, String(i + 1)), " ", c.replace(/_/g, " "));
      li.addEventListener("click", () => pickReason(i));
      ol.appendChild(li);
    });
    $("reason-comment").value = "";
    $("reason").hidden = false;
    pickReason(0);
  }

  function pickReason(i) {
    const lis = $("reason-list").children;
    if (i < 0 || i >= lis.length) return;
    state.reasonPick = i;
    for (let j = 0; j < lis.length; j++) lis[j].classList.toggle("picked", j === i);
  }

  function confirmReason() {
    const li = $("reason-list").children[state.reasonPick];
    if (!li) return;
    $("reason").hidden = true;
    state.mode = "view";
    if (state.reasonFor.startsWith("pick:")) compare(state.reasonFor.slice(5), li.dataset.code, $("reason-comment").value);
    else decide(state.reasonFor, li.dataset.code, $("reason-comment").value);
  }

  async function compare(pick, reasonCode, comment) {
    const item = state.item;
    if (!item) return;
    try {
      const out = await call("POST", `/review/api/examples/${item.example_id}/comparison`, {
        revision_id: item.example.revision.id, pick, reason_code: reasonCode, comment: comment || null,
      });
      await next();
      const label = { a: "A better", b: "B better", tie: "Tie", both_bad: "Both bad" }[pick];
      const x = out.example;
      const settled = out.verdict ? ` → verdict ${out.verdict.verdict.replace("_", " ")}`
        : ` (${x.approvals}/${x.required_approvals} reviews)`;
      say(`${label}: ${item.example_id.slice(0, 8)}${settled}`, "ok");
    } catch (e) {
      say(e.code === "four_eyes" ? "Four eyes: " + e.message : e.message, "error");
    }
  }

  function openEditor() {
    const item = state.item;
    if (!item) return;
    state.mode = "edit";
    const content = item.example.revision.content;
    const box = $("editor-fields");
    box.replaceChildren();
    const add = (label, path, value) => {
      const ta = el("textarea", { "data-path": path, "data-testid": "edit-" + path, rows: "4" });
      ta.value = value;
      box.appendChild(el("label", {}, label, ta));
    };
    if (Array.isArray(content.messages)) content.messages.forEach((m, i) => add(`${i + 1}. ${m.role}`, "messages." + i, m.content));
    else for (const k of Object.keys(content)) add(k, k, content[k]);
    $("edit-comment").value = "";
    $("editor").hidden = false;
    const first = box.querySelector("textarea");
    if (first) first.focus();
  }

  async function saveEdit() {
    const item = state.item;
    const content = JSON.parse(JSON.stringify(item.example.revision.content));
    for (const ta of $("editor-fields").querySelectorAll("textarea")) {
      const path = ta.dataset.path;
      if (path.startsWith("messages.")) content.messages[Number(path.split(".")[1])].content = ta.value;
      else content[path] = ta.value;
    }
    try {
      const out = await call("POST", `/review/api/examples/${item.example_id}/revision`, {
        content, comment: $("edit-comment").value || null, base_revision_id: item.example.revision.id,
      });
      await open(item.example_id);
      say(`Saved revision ${out.revision.seq}; it re-runs the checks and needs a fresh approval.`, "ok");
    } catch (e) {
      const field = e.details && e.details[0] && e.details[0].field;
      say((field ? field + ": " : "") + e.message, "error");
    }
  }

  function cancelMode() {
    $("editor").hidden = true; $("reason").hidden = true; state.mode = "view";
  }

  async function skip() {
    const item = state.item;
    if (!item) return;
    state.skip.push(item.example_id);
    try { await call("POST", `/review/api/examples/${item.example_id}/release`); } catch (e) { /* lease ends anyway */ }
    await next();
  }

  document.addEventListener("keydown", (ev) => {
    const typing = ev.target.matches("input, textarea, select");
    if (state.mode === "edit") {
      if (ev.key === "Escape") { ev.preventDefault(); cancelMode(); }
      else if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) { ev.preventDefault(); saveEdit(); }
      return;
    }
    if (state.mode === "reason") {
      if (ev.key === "Escape") { ev.preventDefault(); cancelMode(); }
      else if (ev.key === "Enter") { ev.preventDefault(); confirmReason(); }
      else if (!typing && /^[1-9]$/.test(ev.key)) { ev.preventDefault(); pickReason(Number(ev.key) - 1); }
      else if (!typing && ev.key === "ArrowDown") { ev.preventDefault(); pickReason(state.reasonPick + 1); }
      else if (!typing && ev.key === "ArrowUp") { ev.preventDefault(); pickReason(state.reasonPick - 1); }
      return;
    }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const pairwise = state.item && state.item.pairwise;
    const actions = pairwise
      ? { "1": () => openReason("pick:a"), ArrowLeft: () => openReason("pick:a"), "2": () => openReason("pick:b"),
        ArrowRight: () => openReason("pick:b"), t: () => openReason("pick:tie"), b: () => openReason("pick:both_bad"),
        r: () => openReason("reject"), c: () => openReason("request_changes"), e: openEditor, s: skip }
      : { a: () => decide("approve"), r: () => openReason("reject"), c: () => openReason("request_changes"),
        e: openEditor, s: skip };
    const fn = actions[ev.key];
    if (fn) { ev.preventDefault(); fn(); }
  });

  $("act-approve").addEventListener("click", () => decide("approve"));
  for (const [id, pick] of [["pick-a", "a"], ["pick-b", "b"], ["pick-tie", "tie"], ["pick-both-bad", "both_bad"]]) {
    $(id).addEventListener("click", () => openReason("pick:" + pick));
  }
  $("act-reject").addEventListener("click", () => openReason("reject"));
  $("act-changes").addEventListener("click", () => openReason("request_changes"));
  $("act-edit").addEventListener("click", openEditor);
  $("act-skip").addEventListener("click", skip);
  $("reason-ok").addEventListener("click", confirmReason);
  $("reason-cancel").addEventListener("click", cancelMode);
  $("edit-save").addEventListener("click", saveEdit);
  $("edit-cancel").addEventListener("click", cancelMode);
  $("dataset").addEventListener("change", () => {
    state.skip = [];
    history.replaceState(null, "", "/review?dataset=" + encodeURIComponent(dataset()));
    next();
  });
  $("dups").addEventListener("click", (ev) => {
    const a = ev.target.closest("a[data-example]");
    if (a) { ev.preventDefault(); open(a.dataset.example).catch((e) => say(e.message, "error")); }
  });
  // Keep the lease while the reviewer reads a long item.
  state.renewTimer = setInterval(() => {
    if (state.item && state.item.lease_expires_at) {
      call("POST", `/review/api/examples/${state.item.example_id}/renew`)
        .then((r) => { state.item.lease_expires_at = r.lease_expires_at; })
        .catch(() => {});
    }
  }, 240000);

  if (!dataset()) { render(null); say("No datasets yet.", "info"); }
  else if (location.hash.length > 1) open(location.hash.slice(1)).catch(() => next());
  else next();
})();
