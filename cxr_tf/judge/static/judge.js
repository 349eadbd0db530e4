// cxr_tf rater page: fetch the current item, answer by click or key, post, repeat.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const px = parseInt(document.querySelector('meta[name="display-px"]').content, 10) || 256;
  const $ = (id) => document.getElementById(id);
  const state = { item: null, revise: false, busy: false, shownAt: 0, pending: 0, renders: 0 };

  for (const id of ["img-ref", "img-left", "img-right"]) {
    $(id).style.width = px + "px";
    $(id).addEventListener("load", imageLoaded);
    $(id).addEventListener("error", () => { setStatus("An image failed to load; reload the page."); imageLoaded(); });
  }

  // data-ready on #stage tells the user (and the browser tests) that an answer will be taken
  function setBusy(v) { state.busy = v; $("stage").dataset.ready = v ? "0" : "1"; }

  function setStatus(text) { $("status").textContent = text || ""; }

  function showProgress(p) {
    $("progress-bar").max = Math.max(p.total, 1);
    $("progress-bar").value = p.answered;
    $("progress-text").textContent = p.answered + " / " + p.total;
  }

  function imageLoaded() {
    state.pending -= 1;
    if (state.pending <= 0) { state.shownAt = performance.now(); setBusy(false); }
  }

  function render(item, selected) {
    state.item = item;
    $("stage").dataset.item = item ? String(item.id) : "";
    $("stage").dataset.kind = item ? item.kind : "";
    $("stage").hidden = !item;
    $("done").hidden = !!item || state.revise;
    if (!item) { setBusy(false); return; }
    const afc = item.kind === "2afc";
    $("ref-row").hidden = !afc;
    $("jnd-buttons").hidden = afc;
    $("choice-left").disabled = !afc;
    $("choice-right").disabled = !afc;
    $("label-left").textContent = afc ? "1 (\u2190)" : "";
    $("label-right").textContent = afc ? "2 (\u2192)" : "";
    $("question").textContent = afc
      ? "Which image is more similar to the reference?"
      : "Are these two images the same?";
    for (const id of ["choice-left", "choice-right", "choice-same", "choice-different"]) {
      $(id).classList.toggle("selected", selected === id.slice(7));
    }
    const slots = afc ? ["ref", "left", "right"] : ["left", "right"];
    setBusy(true);
    state.pending = slots.length;
    state.renders += 1;  // a fresh URL each time, so "load" always fires
    for (const s of slots) { $("img-" + s).src = item.images[s] + "?v=" + state.renders; }
  }

  async function call(method, url, body) {
    const opts = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const resp = await fetch(url, opts);
    if (resp.status === 401) { window.location.href = "/login"; throw new Error("logged out"); }
    let data = {};
    try { data = await resp.json(); } catch (e) { data = {}; }
    return { status: resp.status, data };
  }

  async function loadNext() {
    state.revise = false;
    const r = await call("GET", "/api/next");
    showProgress(r.data.progress);
    render(r.data.item, null);
  }

  async function answer(choice) {
    const item = state.item;
    if (!item || state.busy || !item.choices.includes(choice)) { return; }
    setBusy(true);
    const ms = Math.max(0, Math.round(performance.now() - state.shownAt));
    try {
      const r = await call("POST", "/api/answer", { item: item.id, choice, revise: state.revise, ms });
      setStatus(r.status === 200 || r.status === 201 ? "" : (r.data.error || ("error " + r.status)));
      await loadNext();
    } catch (e) {
      setStatus("Not saved (" + e + "); answer again.");
      setBusy(false);
    }
  }

  async function changeLast() {
    if (state.busy) { return; }
    const r = await call("GET", "/api/last");
    if (!r.data.item) { setStatus("Nothing answered yet."); return; }
    state.revise = true;
    setStatus("Changing your last answer (it was: " + r.data.choice + ")");
    render(r.data.item, r.data.choice);
  }

  $("choice-left").addEventListener("click", () => answer("left"));
  $("choice-right").addEventListener("click", () => answer("right"));
  $("choice-same").addEventListener("click", () => answer("same"));
  $("choice-different").addEventListener("click", () => answer("different"));
  $("change-last").addEventListener("click", changeLast);
  $("logout").addEventListener("click", async () => {
    await call("POST", "/logout", {});
    window.location.href = "/login";
  });

  const KEYS = { "1": "left", ArrowLeft: "left", "2": "right", ArrowRight: "right", s: "same", d: "different" };
  document.addEventListener("keydown", (e) => {
    if (e.repeat || e.ctrlKey || e.altKey || e.metaKey) { return; }
    if (e.key === "Backspace") { e.preventDefault(); changeLast(); return; }
    const choice = KEYS[e.key.length === 1 ? e.key.toLowerCase() : e.key];
    if (choice) { e.preventDefault(); answer(choice); }
  });

  loadNext().catch((e) => setStatus(String(e)));
})();
