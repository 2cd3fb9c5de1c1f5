// The overview page (static/pages/overview.html): the cluster now (GET /api/nodes,
// /api/summary), what was allocated over the last hours (GET /api/usage, from the event
// log: any user may read it, it holds counts only), and the recent activity (an admin:
// the event feed; a user: their own tasks and the nodes' changes). Live: it reads again
// on change notices (HR.onChange), never on a timer.
(function () {
  "use strict";

  const WINDOWS = ["1", "6", "24", "168"];
  // Heartbeats arrive every second per node: they refresh the numbers now, and move the
  // chart's window at most this often.
  const USAGE_EVERY_MS = 30000;
  const CHARTS = [
    { name: "cores", key: "cores", scale: 1, unit: "cores" },
    { name: "memory", key: "memory_bytes", scale: 1 / 1024 ** 3, unit: "GiB" },
    { name: "gpus", key: "gpus", scale: 1, unit: "GPUs" },
  ];

  function cssVar(name, fallback) {
    const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }

  function shortId(id) {
    return id ? id.slice(0, 8) : "";
  }

  function streamLink(stream) {
    const [family, key] = stream.split(":", 2);
    if (family === "task") return { what: `task ${shortId(key)}`, href: `/tasks/${key}` };
    if (family === "job") return { what: `job ${key}`, href: `/jobs/${key}` };
    if (family === "node") return { what: `node ${key}`, href: "/nodes" };
    return { what: stream, href: null };
  }

  function badgeOf(kind) {
    if (/finished|completed/.test(kind)) return "completed";
    if (/lost|offline|failed|killed/.test(kind)) return "failed";
    if (/started|online|registered|running/.test(kind)) return "running";
    return "pending";
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("overviewPage", () => ({
      error: "",
      nodes: [],
      tasks: {},
      hours: "6",
      usage: null,
      usageLoaded: false,
      usageAt: 0,
      activity: [],
      liveNotices: [],
      plots: {},
      _off: null,
      _onResize: null,

      async init() {
        const asked = HR.route.query.get("hours");
        if (WINDOWS.includes(asked)) this.hours = asked;
        this._off = HR.onChange((batch) => this.changed(batch), { debounce: 1000 });
        this._onResize = () => this.resize();
        window.addEventListener("resize", this._onResize);
        await Promise.all([this.loadNow(), this.loadUsage(), this.loadActivity()]);
      },
      destroy() {
        if (this._off) this._off();
        window.removeEventListener("resize", this._onResize);
        for (const plot of Object.values(this.plots)) plot.destroy();
        this.plots = {};
      },

      get nodesOnline() {
        return this.nodes.filter((n) => n.online).length;
      },
      get nodesOffline() {
        return this.nodes.length - this.nodesOnline;
      },
      get now() {
        const sum = { cores: { used: 0, total: 0 }, memory: { used: 0, total: 0 }, gpus: { used: 0, total: 0 } };
        for (const n of this.nodes) {
          if (!n.online) continue;
          sum.cores.total += n.cores;
          sum.cores.used += n.cores - n.free_cores;
          sum.memory.total += n.memory_bytes;
          sum.memory.used += n.memory_bytes - n.free_memory_bytes;
          sum.gpus.total += n.gpus.length;
          sum.gpus.used += n.gpus.length - n.free_gpus.length;
        }
        return sum;
      },
      pct(x) {
        return x.total > 0 ? Math.min(100, Math.round((100 * x.used) / x.total)) : 0;
      },
      get usageHasData() {
        return !!this.usage && CHARTS.some((c) => Math.max(0, ...this.usage[c.key].allocated_peak) > 0);
      },
      peakText(name) {
        if (!this.usage) return "";
        const chart = CHARTS.find((c) => c.name === name);
        const peak = Math.max(0, ...this.usage[chart.key].allocated_peak);
        const shown = name === "memory" ? HR.fmt.bytes(peak) : String(peak);
        return `· peak ${shown}`;
      },

      changed(batch) {
        const real = batch.filter((n) => n.kind !== "node.heartbeat");
        this.loadNow();
        if (real.length > 0 || Date.now() - this.usageAt > USAGE_EVERY_MS) this.loadUsage();
        if (real.length > 0) {
          if (!HR.isAdmin()) {
            // A user's notices: every task's and node's (metadata), their own jobs'.
            for (const n of real) {
              if (n.stream.startsWith("node:")) {
                this.liveNotices.unshift({ ...n, at: new Date().toISOString() });
              }
            }
            this.liveNotices = this.liveNotices.slice(0, 15);
          }
          this.loadActivity();
        }
      },

      async loadNow() {
        try {
          const [nodes, summary] = await Promise.all([HR.get("/api/nodes"), HR.get("/api/summary")]);
          this.nodes = nodes.nodes;
          this.tasks = summary.tasks || {};
          this.error = "";
        } catch (err) {
          this.error = err.text || String(err);
        }
      },

      windowChanged() {
        HR.setQuery({ hours: this.hours === "6" ? null : this.hours });
        this.loadUsage();
      },

      async loadUsage() {
        this.usageAt = Date.now();
        try {
          this.usage = await HR.get("/api/usage", { hours: this.hours, points: 120 });
          this.usageLoaded = true;
          this.draw();
        } catch (err) {
          this.error = err.text || String(err);
        }
      },

      draw() {
        if (!window.uPlot || !this.usage) return;
        const t = this.usage.t;
        for (const chart of CHARTS) {
          const r = this.usage[chart.key];
          const data = [
            t,
            r.allocated.map((v) => v * chart.scale),
            r.allocated_peak.map((v) => v * chart.scale),
            r.total.map((v) => v * chart.scale),
          ];
          const el = this.$refs[chart.name];
          el.dataset.points = String(t.length);
          el.dataset.peakMax = String(Math.max(0, ...r.allocated_peak));
          const plot = this.plots[chart.name];
          if (plot) {
            plot.setData(data);
          } else {
            this.plots[chart.name] = new window.uPlot(this.options(chart, el), data, el);
          }
        }
      },

      options(chart, el) {
        const accent = cssVar("--accent", "#2563eb");
        const warn = cssVar("--warn", "#b54708");
        const muted = cssVar("--muted", "#5d6673");
        const line = cssVar("--line", "#d9dde3");
        const fmt = (v) => (v === null || v === undefined ? "—" : chart.name === "memory" ? v.toFixed(1) : String(+v.toFixed(2)));
        return {
          width: Math.max(260, el.clientWidth || 300),
          height: 200,
          scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(1, hi * 1.1)] } },
          series: [
            {},
            { label: "allocated", stroke: accent, fill: accent + "33", width: 2, value: (u, v) => fmt(v) },
            { label: "peak", stroke: warn, dash: [4, 4], width: 1, value: (u, v) => fmt(v) },
            { label: "offered", stroke: muted, width: 1, value: (u, v) => fmt(v) },
          ],
          axes: [
            { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line } },
            { stroke: muted, grid: { stroke: line, width: 1 }, ticks: { stroke: line }, size: 50 },
          ],
        };
      },

      resize() {
        for (const chart of CHARTS) {
          const plot = this.plots[chart.name];
          const el = this.$refs[chart.name];
          if (plot && el) plot.setSize({ width: Math.max(260, el.clientWidth), height: 200 });
        }
      },

      async loadActivity() {
        try {
          if (HR.isAdmin()) {
            const page = await HR.get("/api/events", {
              tail: 15,
              kind: ["task.*", "job.*", "node.*"],
              exclude: "node.heartbeat",
            });
            this.activity = page.events
              .slice()
              .reverse()
              .map((e) => ({
                key: "e" + e.seq,
                at: e.recorded_at,
                kind: e.kind,
                badge: badgeOf(e.kind),
                detail: e.summary,
                ...streamLink(e.stream),
              }));
            return;
          }
          const mine = await HR.get("/api/tasks", { limit: 15 });
          const items = mine.tasks.map((task) => ({
            key: "t" + task.task_id,
            at: task.finished_at || task.started_at || task.placed_at || task.submitted_at,
            kind: task.state,
            badge: task.state,
            what: `task ${task.number}`,
            href: `/tasks/${task.task_id}`,
            detail: [task.name || task.command, task.node ? `on ${task.node}` : ""].filter(Boolean).join(" "),
          }));
          const nodes = this.liveNotices.map((n) => ({
            key: "n" + n.seq,
            at: n.at,
            kind: n.kind,
            badge: badgeOf(n.kind),
            detail: "",
            ...streamLink(n.stream),
          }));
          this.activity = [...items, ...nodes]
            .sort((a, b) => String(b.at || "").localeCompare(String(a.at || "")))
            .slice(0, 15);
        } catch (err) {
          this.error = err.text || String(err);
        }
      },
    }));
  });
})();
