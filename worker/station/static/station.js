// The review station's page: keyboard first. Holds the items the server locked to this operator
// (the one shown and the next, whose crop is loaded ahead), shows one, and posts what is typed.
// Every text from the server goes in with textContent: keys and file names are never markup.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const input = $("value");
  const state = { queue: [], shown: null, sent: 0, applied: 0, keyed: 0, polling: null, inflight: 0, sent_items: new Set() };
  // Milliseconds from Enter to the next item on screen, crop decoded: the page's own measure,
  // shown in the footer (and read by the test that measures the station).
  window.digitsStation = { timings: [] };

  function api(path, options) {
    const init = Object.assign({ credentials: "same-origin", headers: {} }, options || {});
    init.headers = Object.assign({ Accept: "application/json" }, init.headers);
    return fetch(path, init).then(function (response) {
      if (response.status === 401) { window.location.assign("/login"); throw new Error("logged out"); }
      return response.json().then(function (data) { return { status: response.status, data: data }; });
    });
  }

  function preload(item) {
    if (item && !item.picture) { item.picture = new Image(); item.picture.src = item.crop; }
  }

  function counts(data) {
    if (!data || !data.counts) return;
    $("awaiting").textContent = String(data.counts.awaiting);
    const without = $("without-crop");
    without.hidden = !data.counts.without_crop;
    without.textContent = " · " + data.counts.without_crop + " without a kept crop (not shown here)";
  }

  // A probability as a percentage, with the decimals that tell 99.99% from 100%.
  function percent(p) {
    const value = 100 * Number(p);
    return (value >= 99 || value < 1 ? value.toFixed(2) : value.toFixed(1)) + "%";
  }

  function describe(item) {
    $("key").textContent = item.key;
    $("job").textContent = item.job_id;
    $("job-source").textContent = item.job_source ? "(" + item.job_source + ")" : "";
    $("kind").textContent = item.kind + (item.queue === "interactive" ? " · interactive" : "");
    $("reading").textContent = item.reading === null ? "nothing" : item.reading;
    $("confidence").textContent = item.confidence === null ? "" : "(" + percent(item.confidence) + ")";
    const alternatives = item.alternatives.length
      ? item.alternatives.filter((pair) => pair[0] !== item.reading)
          .map((pair) => pair[0] + " (" + percent(pair[1]) + ")")
      : item.readers.map((r) => r.reader + " " + (r.text === null ? "nothing" : r.text) +
          (r.confidence === null ? "" : " (" + percent(r.confidence) + ")"));
    $("alternatives").textContent = alternatives.join(" · ") || "none";
    $("reasons").textContent = item.reasons.join(", ") || "low confidence";
    $("double-label").hidden = $("double").hidden = !item.double_key;
    $("double").textContent = item.keyed_before
      ? "keyed before by another operator: type what you read"
      : "a second operator keys it too";
  }

  function drawBoxes(item, picture) {
    const boxes = $("boxes");
    boxes.replaceChildren();
    if (!item.digits.length || !picture.naturalWidth) return;
    const w = picture.naturalWidth, h = picture.naturalHeight;
    item.digits.forEach(function (d) {
      if (!d.box) return;
      const box = document.createElement("div");
      box.className = "box";
      box.style.left = (100 * d.box[0] / w) + "%";
      box.style.top = (100 * d.box[1] / h) + "%";
      box.style.width = (100 * (d.box[2] - d.box[0]) / w) + "%";
      box.style.height = (100 * (d.box[3] - d.box[1]) / h) + "%";
      const label = document.createElement("span");
      label.textContent = d.digit === null ? "?" : String(d.digit);
      box.title = d.top3.map((pair) => pair[0] + " " + percent(pair[1])).join(", ");
      box.appendChild(label);
      boxes.appendChild(box);
    });
  }

  function show(started) {
    const item = state.queue[0] || null;
    if (item === null && state.inflight > 0) {
      // Typed ahead of the server: the next item is on its way, not missing (and the time to it
      // counts from this Enter).
      if (started !== undefined) state.waitingSince = started;
      state.shown = null;
      document.body.dataset.item = "";
      $("item").classList.add("loading");
      return;
    }
    $("item").classList.remove("loading");
    $("empty").hidden = item !== null;
    $("item").hidden = item === null;
    if (item === null) {
      state.shown = null;
      document.body.dataset.item = "";
      poll();
      return;
    }
    stopPolling();
    preload(state.queue[1]);
    if (state.shown === item.id) return;
    if (started === undefined && state.waitingSince !== undefined) started = state.waitingSince;
    state.waitingSince = undefined;
    state.shown = item.id;
    describe(item);
    input.value = "";
    input.classList.remove("invalid");
    input.focus();
    preload(item);
    const img = $("crop");
    img.src = item.crop;
    img.decode().catch(function () {}).then(function () {
      if (state.shown !== item.id) return;
      drawBoxes(item, img);
      document.body.dataset.item = String(item.id);  // the item on screen, crop decoded
      if (started !== undefined) {
        const ms = performance.now() - started;
        window.digitsStation.timings.push(ms);
        $("switch-ms").textContent = ms.toFixed(0);
      }
    });
  }

  // The server's list of held items, with the one on screen kept first while it is still held.
  // An answer can be older than a keying sent since: what was sent is never shown again.
  function take(items, sequence) {
    if (sequence < state.applied) return;
    state.applied = sequence;
    items = items.filter((i) => !state.sent_items.has(i.id));
    const shownId = state.shown;
    const mine = items.filter((i) => i.id === shownId);
    state.queue = mine.concat(items.filter((i) => i.id !== shownId));
    show();
  }

  function refill() {
    const sequence = ++state.sent;
    return api("/api/queue").then(function (result) {
      counts(result.data);
      take(result.data.items || [], sequence);
    });
  }

  function poll() {
    if (!state.polling) state.polling = window.setInterval(refill, 3000);
  }

  function stopPolling() {
    if (state.polling) { window.clearInterval(state.polling); state.polling = null; }
  }

  function message(text, bad) {
    const line = $("message");
    line.textContent = text;
    line.classList.toggle("bad", Boolean(bad));
  }

  function valid(item, value) {
    return new RegExp("^(?:" + item.pattern + ")$").test(value);
  }

  // Send one keying; the next item (loaded ahead) is shown at once, the answer refills the queue.
  function submit(payload) {
    const item = state.queue[0];
    if (!item) return;
    if (!payload.unreadable && !valid(item, payload.value)) {
      input.classList.add("invalid");
      message(payload.value ? "“" + payload.value + "” is not a " + item.kind + ": check it" : "Type the value, or ? for unreadable.", true);
      return;
    }
    const started = performance.now();
    message("");
    state.queue.shift();
    state.sent_items.add(item.id);
    state.inflight += 1;
    show(started);
    const sequence = ++state.sent;
    api("/api/items/" + item.id + "/key", {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(payload),
    }).then(function (result) {
      state.inflight -= 1;
      counts(result.data);
      if (result.status === 200) {
        state.keyed += 1;
        $("done-count").textContent = String(state.keyed);
      } else {
        state.sent_items.delete(item.id);  // not taken: it may come back to be keyed again
        message("Not taken for " + item.key + ": " + (result.data.error || result.status), true);
      }
      take(result.data.items || [], sequence);
    }).catch(function (error) {
      state.inflight -= 1;
      state.sent_items.delete(item.id);
      message("Not sent: " + error.message, true);
      refill();
    });
  }

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      submit({ value: input.value.trim() });
    } else if (event.key === "?") {
      event.preventDefault();
      submit({ unreadable: true });
    }
  });
  input.addEventListener("input", function () {
    const item = state.queue[0];
    const ok = !input.value || (item && valid(item, input.value.trim()));
    input.classList.toggle("invalid", !ok && input.value.length >= 1 && item && item.kind === "digit");
  });
  $("keying").addEventListener("submit", function (event) { event.preventDefault(); });
  document.addEventListener("keydown", function (event) {
    if (document.activeElement !== input && !event.ctrlKey && !event.metaKey && !event.altKey) input.focus();
  });
  refill();
})();
