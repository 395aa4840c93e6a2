// Salvia Studio: charts, a log tail that follows running jobs, live endpoint figures, test invoke.
"use strict";

function studioCharts(root) {
  if (typeof Plotly === "undefined") return;
  (root || document).querySelectorAll(".chart[data-figure]").forEach(function (el) {
    var figure = JSON.parse(el.dataset.figure);
    var layout = Object.assign({ margin: { l: 50, r: 20, t: 30, b: 40 }, autosize: true }, figure.layout || {});
    Plotly.newPlot(el, figure.data || [], layout, { responsive: true, displaylogo: false });
  });
}

function studioLogTail() {
  var log = document.getElementById("log-tail");
  if (!log || !log.dataset.url) return;
  var state = { tokens: JSON.parse(log.dataset.tokens || "{}"), status: log.dataset.status };
  var terminal = JSON.parse(log.dataset.terminal || "[]");
  function poll() {
    var url = log.dataset.url + "?tokens=" + encodeURIComponent(JSON.stringify(state.tokens));
    fetch(url).then(function (r) { return r.json(); }).then(function (answer) {
      if (answer.error) {
        document.getElementById("log-error").textContent = answer.error;
        return;
      }
      state.tokens = answer.tokens;
      if (answer.lines.length) {
        var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.textContent += answer.lines.join("\n") + "\n";
        if (atBottom) log.scrollTop = log.scrollHeight;
      }
      if (answer.status !== state.status) {
        // the page's timeline, metrics and artifacts change with the status
        window.location.reload();
        return;
      }
      if (terminal.indexOf(answer.status) < 0) setTimeout(poll, 2000);
    }).catch(function (e) { document.getElementById("log-error").textContent = String(e); });
  }
  log.scrollTop = log.scrollHeight;
  if (terminal.indexOf(state.status) < 0) setTimeout(poll, 2000);
}

// Live invocation figures from the server's public Prometheus route, polled while the page is open.
function studioEndpointLive() {
  var el = document.getElementById("live-metrics");
  if (!el || typeof Plotly === "undefined") return;
  var endpoint = el.dataset.endpoint, last = null, times = [], rates = [], latencies = [];
  function sum(text, name) {
    var total = 0, pattern = name + "{endpoint=\"" + endpoint.replace(/"/g, '\\"') + "\"";
    text.split("\n").forEach(function (line) {
      if (line.indexOf(pattern) === 0) total += parseFloat(line.split(" ").pop());
    });
    return total;
  }
  function draw() {
    Plotly.react(el, [
      { x: times, y: rates, name: "invocations / s", mode: "lines+markers" },
      { x: times, y: latencies, name: "model latency (ms)", mode: "lines+markers", yaxis: "y2" }
    ], { margin: { l: 50, r: 50, t: 30, b: 40 },
         // a sliding window of the last five minutes (the points kept)
         xaxis: { type: "date", range: [new Date(Date.now() - 300000), new Date(Date.now() + 5000)] },
         yaxis: { title: { text: "invocations / s" }, rangemode: "tozero" },
         yaxis2: { title: { text: "ms" }, overlaying: "y", side: "right", rangemode: "tozero" },
         legend: { orientation: "h" } }, { responsive: true, displaylogo: false });
  }
  function poll() {
    fetch("/metrics").then(function (r) { return r.text(); }).then(function (text) {
      var now = { t: Date.now(), n: sum(text, "sagemaker_invocations_total"),
                  us: sum(text, "sagemaker_model_latency_microseconds_sum"),
                  timed: sum(text, "sagemaker_latency_samples_total") };
      document.getElementById("live-total").textContent = now.n;
      if (last) {
        var seconds = (now.t - last.t) / 1000, calls = now.timed - last.timed;
        times.push(new Date(now.t));
        rates.push((now.n - last.n) / seconds);
        latencies.push(calls > 0 ? (now.us - last.us) / calls / 1000 : null);
        while (times.length && times[0] < now.t - 300000) { times.shift(); rates.shift(); latencies.shift(); }
        draw();
      }
      last = now;
    }).catch(function () {});
  }
  draw();
  poll();
  setInterval(poll, 3000);
  window.studioPollEndpoint = poll;  // a test invoke shows in the figures at once
}

function studioInvoke() {
  var form = document.getElementById("invoke-form");
  if (!form) return;
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var out = document.getElementById("invoke-result");
    var headers = { "Content-Type": form.elements.contentType.value, "Accept": form.elements.accept.value };
    if (form.elements.variant.value) headers["X-Amzn-SageMaker-Target-Variant"] = form.elements.variant.value;
    var csrf = document.querySelector('meta[name="csrf-token"]');
    if (csrf) headers["X-CSRF-Token"] = csrf.content;  // signed-in Studio refuses posts without it
    out.className = "json";
    out.textContent = "…";
    var started = performance.now();
    fetch(form.dataset.url, { method: "POST", headers: headers, body: form.elements.body.value })
      .then(function (r) {
        return r.text().then(function (text) {
          var ms = Math.round(performance.now() - started);
          if (window.studioPollEndpoint) window.studioPollEndpoint();
          if (r.ok) {
            out.textContent = text;
            document.getElementById("invoke-meta").textContent = "HTTP " + r.status + " in " + ms + " ms, variant " +
              (r.headers.get("X-Amzn-Invoked-Production-Variant") || "?");
          } else {
            var shown = text;
            try { var e = JSON.parse(text); shown = (e.__type || e.code || "Error") + ": " + (e.message || e.Message || text); } catch (x) {}
            out.className = "error";
            out.textContent = shown;
            document.getElementById("invoke-meta").textContent = "HTTP " + r.status;
          }
        });
      })
      .catch(function (e) { out.className = "error"; out.textContent = String(e); });
  });
}

// Parts of a page whose state is still moving are fetched again and swapped in place.
function studioRefresh() {
  var main = document.querySelector("main[data-refresh]");
  if (!main) return;
  var selectors = main.dataset.refresh.split(",").map(function (s) { return s.trim(); });
  var last = {};
  selectors.forEach(function (selector) {
    var el = document.querySelector(selector);
    if (el) last[selector] = el.innerHTML;  // read before any chart is drawn into it
  });
  function renew() {
    if (main.dataset.live !== "true" || document.hidden) return setTimeout(renew, 4000);
    fetch(window.location.href, { headers: { "Accept": "text/html" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        var fresh = new DOMParser().parseFromString(html, "text/html");
        selectors.forEach(function (selector) {
          var now = document.querySelector(selector), then = fresh.querySelector(selector);
          // compared with what was fetched last (a drawn chart is no longer its HTML)
          if (now && then && last[selector] !== then.innerHTML) {
            last[selector] = then.innerHTML;
            now.innerHTML = then.innerHTML;
            studioCharts(now);  // a chart inside what was renewed is drawn again
          }
        });
        var freshMain = fresh.querySelector("main[data-refresh]");
        main.dataset.live = freshMain ? freshMain.dataset.live : "false";
      })
      .catch(function () {})
      .then(function () { setTimeout(renew, 4000); });
  }
  setTimeout(renew, 4000);
}

document.addEventListener("DOMContentLoaded", function () {
  studioRefresh();
  studioCharts();
  studioLogTail();
  studioEndpointLive();
  studioInvoke();
});
