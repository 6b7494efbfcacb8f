/*
 * The operator pages' behaviour on top of htmx (no build step):
 * - the WebSocket of htmx's extension opened with the page's cursor, and, while it cannot connect,
 *   htmx's own polling every 2 s in its place;
 * - out-of-band swaps that never take the connection state back to an older version, nor show an item twice;
 * - the QR countdown, times in the reader's time zone, focus kept for keyboard and screen reader users.
 */
(function () {
  "use strict";

  var stopped = false;
  var refocus = null;

  // --- Where the page is: sent with every WebSocket (re)connection and every poll -----------------

  function cursorQuery() {
    var params = [];
    var cursor = document.getElementById("live-cursor");
    if (cursor) {
      params.push("seq=" + encodeURIComponent(cursor.dataset.seq));
      params.push("after=" + encodeURIComponent(cursor.dataset.after));
    }
    var pending = [];
    document.querySelectorAll("#messages [data-pending]").forEach(function (el) {
      pending.push(el.id.replace("msg-", "") + ":" + el.dataset.status);
    });
    if (pending.length) {
      params.push("pending=" + encodeURIComponent(pending.slice(-100).join(",")));
    }
    return params.join("&");
  }

  function withCursor(url) {
    var query = cursorQuery();
    return query ? url + (url.indexOf("?") < 0 ? "?" : "&") + query : url;
  }

  htmx.createWebSocket = function (url) {
    var socket = new WebSocket(withCursor(url));
    socket.binaryType = htmx.config.wsBinaryType;
    return socket;
  };

  // --- WebSocket, or polling when it cannot connect ---------------------------------------------

  function setMode(mode) {
    var el = document.getElementById("live-mode");
    if (!el) return;
    el.dataset.mode = mode;
    var label = el.getAttribute("data-label-" + mode);
    if (label) el.textContent = label;
  }

  // Polling is htmx's own: an element that asks every 2 s (and at once when this page queued something,
  // live:changed), sending the cursor's inputs. It exists only while the WebSocket is down.
  function startPolling() {
    var root = document.getElementById("live");
    if (stopped || !root || document.getElementById("live-poll")) return;
    setMode("polling");
    var poller = document.createElement("div");
    poller.id = "live-poll";
    poller.hidden = true;
    poller.setAttribute("hx-get", root.dataset.livePoll);
    poller.setAttribute("hx-trigger", "load, every 2s, live:changed from:body");
    poller.setAttribute("hx-include", "#live-cursor input, #messages [data-pending] > input");
    poller.setAttribute("hx-swap", "none");
    root.appendChild(poller);
    htmx.process(poller);
  }

  function stopPolling() {
    var poller = document.getElementById("live-poll");
    if (poller) poller.remove();
  }

  document.addEventListener("htmx:wsOpen", function () {
    stopPolling();
    setMode("live");
  });
  document.addEventListener("htmx:wsClose", function (event) {
    var code = event.detail.event && event.detail.event.code;
    if (code === 4401 || code === 4404) {
      // Logged out, or the bot is gone: nothing more will come.
      stopped = true;
      stopPolling();
      setMode("stopped");
      return;
    }
    startPolling();
  });
  document.addEventListener("htmx:wsError", startPolling);

  // --- Out-of-band swaps --------------------------------------------------------------------------

  document.addEventListener("htmx:oobBeforeSwap", function (event) {
    var detail = event.detail;
    var target = detail.target;
    var incoming = detail.fragment.firstElementChild;
    if (incoming && incoming.id && incoming.id === target.id) {
      // A replacement. Frames carry the session version: an older one never replaces a newer one.
      if (target.dataset.seq && incoming.dataset.seq && Number(incoming.dataset.seq) < Number(target.dataset.seq)) {
        detail.shouldSwap = false;
      }
      if (target.id === "live-cursor" && Number(incoming.dataset.after) < Number(target.dataset.after)) {
        detail.shouldSwap = false;
      }
      if (detail.shouldSwap && target.contains(document.activeElement)) {
        refocus = target.id;
      }
      return;
    }
    // An append of something the page shows already (the WebSocket and a poll may both bring it, and
    // recent messages are sent again in case one committed late): never twice; a changed status replaces
    // the old rendering, an unchanged one is left alone so screen readers do not announce it again.
    Array.prototype.slice.call(detail.fragment.children).forEach(function (child) {
      var shown = child.id && document.getElementById(child.id);
      if (!shown) return;
      if (child.dataset.status && child.dataset.status !== shown.dataset.status) {
        shown.replaceWith(child);
        localTimes(child.parentNode);
      } else {
        child.remove();
      }
    });
    if (target.id === "messages") {
      target.dataset.stick = target.scrollHeight - target.scrollTop - target.clientHeight < 80 ? "1" : "";
    }
  });

  document.addEventListener("htmx:oobAfterSwap", function (event) {
    var target = event.detail.target;
    if (target && target.id === "messages" && target.dataset.stick) {
      target.scrollTop = target.scrollHeight;
    }
    if (refocus) {
      // The control that had the focus was replaced: keep keyboard and screen reader users where they were.
      var el = document.getElementById(refocus);
      refocus = null;
      if (el && !el.contains(document.activeElement)) el.focus({ preventScroll: true });
    }
  });

  // --- New content: countdowns, local times ----------------------------------------------------------

  function startCountdowns(root) {
    root.querySelectorAll("[data-countdown]").forEach(function (el) {
      if (!el.dataset.deadline) el.dataset.deadline = String(Date.now() + Number(el.dataset.countdown) * 1000);
    });
  }

  function tick() {
    document.querySelectorAll("[data-countdown]").forEach(function (el) {
      if (!el.dataset.deadline) return;
      var left = Math.max(0, Math.round((Number(el.dataset.deadline) - Date.now()) / 1000));
      var seconds = el.querySelector(".seconds");
      if (seconds) seconds.textContent = String(left);
    });
  }

  function localTimes(root) {
    var lang = document.documentElement.lang || undefined;
    var today = new Date().toDateString();
    root.querySelectorAll("time[data-local]").forEach(function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      el.textContent = date.toDateString() === today
        ? date.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" })
        : date.toLocaleString(lang, { dateStyle: "short", timeStyle: "short" });
      el.title = date.toLocaleString(lang);
      el.removeAttribute("data-local");
    });
  }

  function scrollLog() {
    var log = document.getElementById("messages");
    if (log) log.scrollTop = log.scrollHeight;
  }

  document.addEventListener("htmx:load", function (event) {
    var root = event.detail.elt;
    if (!root || !root.querySelectorAll) return;
    startCountdowns(root.parentNode || root);
    localTimes(root.parentNode || root);
    if (root.id === "wizard") {
      // A wizard step replaced the form: take keyboard and screen reader users to its first error, or its title.
      var invalid = root.querySelector("[aria-invalid=true]");
      (invalid || document.getElementById("wizard-step-title")).focus();
    }
  });

  startCountdowns(document);
  localTimes(document);
  scrollLog();
  window.setInterval(tick, 1000);
})();
