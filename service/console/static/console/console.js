// fedcompute console: confirmations for destructive forms, and a task group's live view
// (progress bar, throughput and duration charts). Data is only ever put in the page with
// textContent and SVG attributes, never as markup.
"use strict";

(function () {
  document.addEventListener("submit", function (event) {
    const button = event.submitter;
    const message = (button && button.dataset.confirm) || event.target.dataset.confirm;
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  const live = document.getElementById("group-live");
  if (live) {
    groupView(live);
  }

  function groupView(root) {
    const SVG = "http://www.w3.org/2000/svg";
    const BAR = ["success", "failed", "cancelled", "running", "waiting-for-nodes", "leased",
                 "waiting-for-endpoint", "received"];
    const FINAL = ["success", "failed", "cancelled"];
    const WIDTHS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600,
                    43200, 86400];
    const PER_DECADE = 4;
    const throughput = new Map();  // second -> [succeeded, failed] (weighted)
    const durations = new Map();   // log bucket -> [succeeded, failed] (weighted)
    const sample = {size: 0, sampled: 0, exact: true, weight: 0, finished: 0};
    let liveCount = 0;
    let cursor = "0";
    let source = null;
    const status = document.getElementById("live-status");
    const fmt = (n) => Math.round(n).toLocaleString("en-US");

    function add(points, weight) {
      for (const [at, duration, failed] of points) {
        const second = Math.floor(at);
        const t = throughput.get(second) || [0, 0];
        t[failed] += weight;
        throughput.set(second, t);
        if (duration !== null) {
          const bucket = Math.floor(Math.log10(Math.max(duration, 1e-4)) * PER_DECADE);
          const d = durations.get(bucket) || [0, 0];
          d[failed] += weight;
          durations.set(bucket, d);
        }
      }
    }

    function setCounts(size, counts) {
      const total = Math.max(size, BAR.reduce((s, k) => s + (counts[k] || 0), 0), 1);
      const done = FINAL.reduce((s, k) => s + (counts[k] || 0), 0);
      let x = 0;
      for (const state of BAR) {
        const width = 100 * (counts[state] || 0) / total;
        const rect = root.querySelector(`rect[data-state="${state}"]`);
        if (rect) {
          rect.setAttribute("x", x.toFixed(4));
          rect.setAttribute("width", width.toFixed(4));
          rect.querySelector("title").textContent = `${state}: ${counts[state] || 0}`;
        }
        const label = root.querySelector(`[data-count="${state}"]`);
        if (label) {
          label.textContent = fmt(counts[state] || 0);
          label.parentElement.classList.toggle("zero", !counts[state]);
        }
        x += width;
      }
      const percent = size ? 100 * done / total : 0;
      document.getElementById("progress-pct").textContent = percent.toFixed(1) + "%";
      document.getElementById("done-count").textContent = fmt(done);
      document.getElementById("size-count").textContent = fmt(size);
      return size > 0 && done >= size;
    }

    function el(name, attrs, text) {
      const node = document.createElementNS(SVG, name);
      for (const [k, v] of Object.entries(attrs)) {
        node.setAttribute(k, v);
      }
      if (text !== undefined) {
        node.textContent = text;
      }
      return node;
    }

    // Stacked bars (succeeded, failed) of `values` in a 600 x 180 plot, with labels.
    function plot(svg, values, yLabel, xLabels) {
      svg.replaceChildren();
      const left = 48, right = 8, top = 10, bottom = 24, w = 600 - left - right,
            h = 180 - top - bottom;
      const max = values.reduce((m, [a, b]) => Math.max(m, a + b), 0);
      svg.appendChild(el("line", {x1: left, y1: top + h, x2: left + w, y2: top + h,
                                  class: "axis"}));
      svg.appendChild(el("text", {x: left - 6, y: top + 8, class: "label end"},
                         max ? yLabel(max) : ""));
      svg.appendChild(el("text", {x: left - 6, y: top + h, class: "label end"}, "0"));
      if (!values.length || !max) {
        svg.appendChild(el("text", {x: left + w / 2, y: top + h / 2, class: "label middle"},
                           "no finished tasks yet"));
        return;
      }
      // Few buckets: bars of at most 48 px, centred.
      const step = Math.min(w / values.length, 48);
      const x0 = left + (w - step * values.length) / 2;
      values.forEach(([ok, failed], i) => {
        const x = x0 + i * step + step * 0.08;
        const bw = Math.max(step * 0.84, 0.5);
        const hOk = h * ok / max, hFailed = h * failed / max;
        if (ok > 0) {
          svg.appendChild(el("rect", {x, y: top + h - hOk, width: bw, height: hOk,
                                      class: "bar-ok"}));
        }
        if (failed > 0) {
          svg.appendChild(el("rect", {x, y: top + h - hOk - hFailed, width: bw,
                                      height: hFailed, class: "bar-failed"}));
        }
      });
      for (const [i, text] of xLabels) {
        svg.appendChild(el("text", {x: x0 + i * step, y: 180 - 6, class: "label middle"},
                           text));
      }
    }

    function range(numbers) {
      let low = Infinity, high = -Infinity;
      for (const n of numbers) {
        low = Math.min(low, n);
        high = Math.max(high, n);
      }
      return [low, high];
    }

    function clock(seconds) {
      return new Date(seconds * 1000).toISOString().slice(11, 19);
    }

    function drawThroughput() {
      const seconds = [...throughput.keys()];
      const svg = document.getElementById("throughput");
      if (!seconds.length) {
        plot(svg, [], null, []);
        return;
      }
      const [first, last] = range(seconds);
      const width = WIDTHS.find((s) => (last - first + 1) / s <= 60) || 86400;
      const n = Math.floor((last - first) / width) + 1;
      const values = Array.from({length: n}, () => [0, 0]);
      for (const [second, [ok, failed]] of throughput) {
        const b = Math.floor((second - first) / width);
        values[b][0] += ok / width;
        values[b][1] += failed / width;
      }
      plot(svg, values, (m) => `${m >= 10 ? Math.round(m) : m.toFixed(1)}/s`,
           [[0.5, clock(first)], [n - 0.5, clock(first + (n - 1) * width)]]);
      svg.dataset.buckets = String(n);
      svg.dataset.bucketSeconds = String(width);
    }

    function durationLabel(bucket) {
      const s = Math.pow(10, bucket / PER_DECADE);
      if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
      if (s < 1) return `${Math.round(s * 1e3)} ms`;
      if (s < 60) return `${Math.round(s)} s`;
      if (s < 3600) return `${Math.round(s / 60)} min`;
      return `${Math.round(s / 3600)} h`;
    }

    function drawDurations() {
      const buckets = [...durations.keys()];
      const svg = document.getElementById("durations");
      if (!buckets.length) {
        plot(svg, [], null, []);
        return;
      }
      const [first, last] = range(buckets);
      const values = [];
      const labels = [];
      for (let b = first; b <= last; b++) {
        values.push(durations.get(b) || [0, 0]);
        if (last - first < 8 || b % PER_DECADE === 0) {
          labels.push([b - first, durationLabel(b)]);
        }
      }
      if (!labels.length) {
        labels.push([0, durationLabel(first)]);
      }
      plot(svg, values, (m) => fmt(m), labels);
      svg.dataset.buckets = String(values.length);
    }

    function caption() {
      // Exact when the sample was the whole group, or nothing had finished when it was
      // taken (every point then came live, one per task).
      const exact = sample.exact || sample.finished === 0;
      const total = sample.finished + liveCount;
      const text = exact
        ? (total ? `All ${fmt(total)} finished tasks` : "No task has finished yet")
        : `Estimated from ${fmt(sample.sampled)} of ${fmt(sample.size)} tasks sampled ` +
          `evenly (each finished one counts ×${sample.weight.toFixed(1)})` +
          (liveCount ? `, plus ${fmt(liveCount)} finished since` : "");
      document.getElementById("throughput-caption").textContent =
        `${text}. Tasks finished per second.`;
      document.getElementById("durations-caption").textContent =
        `${text}. Lease to result, per task (log scale).`;
    }

    function redraw() {
      drawThroughput();
      drawDurations();
      caption();
    }

    // The task list shown is one page; keep its states fresh while tasks finish, at most
    // every 2 s, and only while some of its tasks have not finished.
    let rowsDue = 0, rowsBusy = false, rowsAgain = false;
    function refreshRows(force) {
      const open = [...document.querySelectorAll("#tasks tbody tr")]
        .filter((row) => !FINAL.includes(row.dataset.state));
      if (rowsBusy) {
        rowsAgain = rowsAgain || force;
        return;
      }
      if (!open.length || (!force && Date.now() < rowsDue)) {
        return;
      }
      rowsBusy = true;
      rowsDue = Date.now() + 2000;
      fetch(root.dataset.rows, {credentials: "same-origin", headers: {Accept: "application/json"}})
        .then((response) => response.ok ? response.json() : {tasks: []})
        .then((page) => {
          for (const task of page.tasks) {
            const row = document.querySelector(`#tasks tr[data-task-id="${CSS.escape(task.task_id)}"]`);
            if (!row || row.dataset.state === task.status) {
              continue;
            }
            row.dataset.state = task.status;
            const badge = row.querySelector(".task-state .state");
            badge.textContent = task.status;
            badge.className = `state state-${task.status}`;
            row.querySelector(".task-duration").textContent = task.duration;
          }
        })
        .catch(() => {})
        .finally(() => {
          rowsBusy = false;
          if (rowsAgain) {
            rowsAgain = false;
            refreshRows(true);
          }
        });
    }

    function connect() {
      source = new EventSource(`${root.dataset.events}?cursor=${encodeURIComponent(cursor)}`);
      status.textContent = "live";
      source.addEventListener("progress", (event) => {
        const message = JSON.parse(event.data);
        cursor = event.lastEventId || cursor;
        liveCount += message.points.length;
        add(message.points, 1);
        setCounts(message.size, message.counts);
        redraw();
        refreshRows(false);
      });
      source.addEventListener("done", () => {
        source.close();
        refreshRows(true);
        status.textContent = "done";
        root.dataset.done = "1";
      });
      source.addEventListener("error", () => {
        // The server ends each stream after a while; the browser reconnects by itself
        // (CONNECTING). CLOSED means it gave up (signed out, too many views): retry later.
        if (source.readyState === EventSource.CLOSED && root.dataset.done !== "1") {
          status.textContent = "reconnecting…";
          setTimeout(connect, 5000);
        }
      });
    }

    fetch(root.dataset.stats, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then((response) => {
        if (!response.ok) {
          throw new Error(`statistics: HTTP ${response.status}`);
        }
        return response.json();
      })
      .then((stats) => {
        Object.assign(sample, {size: stats.size, sampled: stats.sampled, exact: stats.exact,
                               weight: stats.weight, finished: stats.points.length});
        cursor = stats.cursor;
        add(stats.points, stats.exact ? 1 : stats.weight);
        const done = setCounts(stats.size, stats.counts);
        redraw();
        if (!done) {
          connect();
        } else {
          status.textContent = "done";
          root.dataset.done = "1";
          refreshRows(true);
        }
      })
      .catch((error) => {
        status.textContent = String(error.message || error);
      });
  }
})();
