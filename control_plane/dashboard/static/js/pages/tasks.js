// The tasks pages: the list (static/pages/tasks.html, "tasksPage") and one task in detail
// (static/pages/task.html, "taskPage").
//
// The list asks the host for one page at a time (GET /api/tasks: filters, text search,
// sort and offset are applied there, so 100k tasks cost the browser one page); its state
// lives in the URL. Live: change notices for tasks ("task:<id>") refresh the rows shown,
// one request per changed row, or the page when tasks were submitted or many changed.
(function () {
  "use strict";

  const STATES = ["pending", "assigning", "running", "paused", "unknown", "completed", "failed", "killed", "killed_oom", "lost"];
  const ACTIVE = new Set(["pending", "assigning", "running", "paused", "unknown"]);
  const SORT_KEYS = [
    ["number", "number"],
    ["submitted", "submitted"],
    ["started", "started"],
    ["finished", "finished"],
    ["state", "state"],
    ["node", "node"],
    ["owner", "owner"],
    ["name", "name"],
    ["cores", "cores"],
    ["run_time", "run time"],
  ];
  const DEFAULTS = { q: "", status: "", node: "", name: "", owner: "", all: false, sort: "number", order: "desc", size: 50, page: 0, batch: "" };
  // Past this many changed rows in one notice batch, one page request beats a request per row.
  const ROW_REFRESH_MAX = 8;
  const RELOAD_EVERY_MS = 1000;

  function commandLine(t) {
    if (t.redacted) return "(redacted)";
    const words = [t.command, ...(t.args || [])].map((w) => (/[\s"'\\]/.test(w) || w === "" ? JSON.stringify(w) : w));
    return words.join(" ");
  }

  // The list's filters from the URL (HR.route.query), unknown values back to defaults.
  function filtersFromUrl(query) {
    const f = { ...DEFAULTS };
    for (const key of ["q", "status", "node", "name", "owner", "batch"]) f[key] = query.get(key) || "";
    f.all = query.get("all") === "1";
    const sort = query.get("sort");
    if (SORT_KEYS.some((k) => k[0] === sort)) f.sort = sort;
    if (query.get("order") === "asc") f.order = "asc";
    const size = parseInt(query.get("size") || "", 10);
    if ([25, 50, 100, 200].includes(size)) f.size = size;
    const page = parseInt(query.get("page") || "", 10);
    if (page > 0) f.page = page - 1;
    return f;
  }

  function urlOf(f) {
    const out = {};
    for (const [key, value] of Object.entries(f)) {
      if (key === "page") {
        if (value > 0) out.page = value + 1;
      } else if (key === "all") {
        if (value) out.all = 1;
      } else if (value !== DEFAULTS[key] && value !== "") out[key] = value;
    }
    return out;
  }

  // Kill, pause or resume a task; the host decides who may (its owner or an admin), and
  // its refusal is shown as it said it.
  async function actOn(component, t, verb) {
    component.busy = { ...component.busy, [t.task_id]: true };
    component.actionError = "";
    try {
      const done = await HR.post(`/api/tasks/${t.task_id}/${verb}`);
      HR.toast(`task ${done.number}: ${verb} requested`, "ok");
      await component.refreshOne(t.task_id);
    } catch (err) {
      const text = err.text || String(err);
      component.actionError = text.includes(`task ${t.number}`) ? text : `task ${t.number}: ${text}`;
      HR.toast(component.actionError, "error");
    } finally {
      const busy = { ...component.busy };
      delete busy[t.task_id];
      component.busy = busy;
    }
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("tasksPage", () => ({
      f: { ...DEFAULTS },
      states: STATES,
      sortKeys: SORT_KEYS,
      nodes: [],
      tasks: [],
      total: 0,
      loaded: false,
      error: "",
      actionError: "",
      busy: {},
      me: null,
      stop: null,
      loading: null,
      reloadTimer: null,
      upto: null, // the first page's highest task number (GET /api/tasks' upto)
      init() {
        this.me = HR.me;
        this.f = filtersFromUrl(HR.route.query);
        this.load();
        HR.get("/api/nodes")
          .then((doc) => (this.nodes = doc.nodes.map((n) => n.name).sort()))
          .catch(() => {});
        this.stop = HR.onChange((notices) => this.changed(notices), { match: "task:", debounce: 80 });
      },
      destroy() {
        if (this.stop) this.stop();
        if (this.reloadTimer) clearTimeout(this.reloadTimer);
        if (this.loading) this.loading.abort();
      },
      params() {
        const f = this.f;
        const p = { sort: f.sort, order: f.order, limit: f.size, offset: f.page * f.size, q: f.q, name: f.name, node: f.node, status: f.status, batch: f.batch };
        if (f.all) p.all_users = 1;
        else if (f.owner) p.owner = f.owner;
        // Past the first page, the walk keeps the first page's bound: tasks submitted
        // since do not shift the rows (the first page shows them).
        if (f.page > 0 && this.upto) p.upto = this.upto;
        return p;
      },
      async load() {
        if (this.loading) this.loading.abort();
        const controller = new AbortController();
        this.loading = controller;
        try {
          const doc = await HR.api("GET", "/api/tasks?" + HR.query(this.params()), null, { signal: controller.signal });
          this.tasks = doc.tasks;
          this.total = doc.total;
          if (this.f.page === 0 || !this.upto) this.upto = doc.upto;
          this.error = "";
          if (!doc.tasks.length && this.f.page > 0 && doc.total > 0) {
            this.f.page = Math.max(0, this.pages() - 1); // the page emptied: show the last one
            HR.setQuery(urlOf(this.f));
            return this.load();
          }
        } catch (err) {
          if (err.name === "AbortError") return;
          this.error = err.text || String(err);
          this.tasks = [];
          this.total = 0;
        } finally {
          if (this.loading === controller) this.loading = null;
          this.loaded = true;
        }
      },
      async refreshOne(taskId) {
        try {
          const fresh = await HR.get(`/api/tasks/${taskId}`);
          const i = this.tasks.findIndex((t) => t.task_id === taskId);
          if (i >= 0) this.tasks.splice(i, 1, fresh);
        } catch (err) {
          /* gone or refused: the next page load says so */
        }
      },
      changed(notices) {
        const shown = new Set(this.tasks.map((t) => t.task_id));
        const ids = new Set();
        let submitted = false;
        for (const n of notices) {
          if (n.kind === "resync") return this.load(); // missed too much: read it again
          if (n.kind === "task.submitted") submitted = true;
          const id = n.stream.slice("task:".length);
          if (shown.has(id)) ids.add(id);
        }
        // A filter or another order than the number's: a change can move a row into or
        // out of this page, so the page is read again (a notice batch at a time).
        const f = this.f;
        const reordered = f.q || f.status || f.name || f.node || f.sort !== "number";
        if (submitted && this.f.page > 0) submitted = false; // outside this walk's bound
        if (reordered && !submitted) return this.reloadSoon();
        if (submitted || ids.size > ROW_REFRESH_MAX) return this.load();
        return Promise.all([...ids].map((id) => this.refreshOne(id)));
      },
      // A filtered or re-sorted page is read again at most once a second: on a busy
      // cluster every task change would otherwise cost the host a filtered sort.
      reloadSoon() {
        if (this.reloadTimer) return;
        this.reloadTimer = setTimeout(() => {
          this.reloadTimer = null;
          this.load();
        }, RELOAD_EVERY_MS);
      },
      apply() {
        this.f.page = 0;
        HR.setQuery(urlOf(this.f));
        this.load();
      },
      reset() {
        this.f = { ...DEFAULTS, size: this.f.size };
        this.apply();
      },
      filtered() {
        const f = this.f;
        return !!(f.q || f.status || f.node || f.name || f.owner || f.all || f.batch);
      },
      goPage(page) {
        this.f.page = Math.max(0, Math.min(page, this.pages() - 1));
        HR.setQuery(urlOf(this.f));
        this.load();
      },
      pages() {
        return Math.max(1, Math.ceil(this.total / this.f.size));
      },
      sortBy(key) {
        if (this.f.sort === key) this.f.order = this.f.order === "desc" ? "asc" : "desc";
        else {
          this.f.sort = key;
          this.f.order = ["name", "owner", "node", "state"].includes(key) ? "asc" : "desc";
        }
        this.apply();
      },
      ariaSort(key) {
        if (this.f.sort !== key) return "none";
        return this.f.order === "asc" ? "ascending" : "descending";
      },
      arrow(key) {
        if (this.f.sort !== key) return "";
        return this.f.order === "asc" ? " ▲" : " ▼";
      },
      summary() {
        if (!this.total) return "";
        const first = this.f.page * this.f.size + 1;
        const last = first + this.tasks.length - 1;
        return `${first}–${last} of ${this.total} task${this.total === 1 ? "" : "s"}`;
      },
      active: (t) => ACTIVE.has(t.state),
      isBusy(t) {
        return this.busy[t.task_id] === true;
      },
      act(t, verb) {
        return actOn(this, t, verb);
      },
      mayAct(t) {
        return !t.redacted && (HR.isAdmin() || (HR.me && t.owner === HR.me.user));
      },
      commandLine,
      fmtTime: (v) => HR.fmt.time(v),
      fmtAgo: (v) => HR.fmt.ago(v),
      fmtDuration: (v) => HR.fmt.duration(v),
    }));

    window.Alpine.data("taskPage", () => ({
      ident: null,
      task: null,
      error: "",
      actionError: "",
      busy: {},
      history: null,
      historyError: "",
      why: null,
      whyError: "",
      stream: "stdout",
      logError: "",
      logNote: "",
      following: false,
      logBytes: 0,
      stop: null,
      follower: null,
      init() {
        this.ident = HR.route.id;
        this.load().then(async () => {
          if (!this.task) return;
          this.loadHistory();
          this.loadWhy();
          await this.$nextTick(); // the output box is drawn once the task is known
          if (!this.task.redacted) this.openLog();
        });
        this.stop = HR.onChange(() => this.changed(), {
          match: (n) => this.task && n.stream === "task:" + this.task.task_id,
          debounce: 100,
        });
      },
      destroy() {
        if (this.stop) this.stop();
        this.closeLog();
      },
      async load() {
        try {
          this.task = await HR.get(`/api/tasks/${encodeURIComponent(this.ident)}`);
          this.error = "";
          document.title = `Task ${this.task.number} · HakuRiver`;
        } catch (err) {
          this.error = err.status === 404 ? `No task ${this.ident}.` : err.text || String(err);
        }
      },
      async refreshOne() {
        await this.load();
      },
      active: (t) => ACTIVE.has(t.state),
      isBusy(t) {
        return this.busy[t.task_id] === true;
      },
      act(t, verb) {
        return actOn(this, t, verb);
      },
      async changed() {
        const before = this.task && this.task.state;
        await this.load();
        this.loadHistory();
        if (this.task && before !== this.task.state) this.loadWhy();
      },
      async loadHistory() {
        try {
          this.history = await HR.get(`/api/tasks/${this.task.task_id}/history`);
          this.historyError = "";
        } catch (err) {
          this.historyError = err.text || String(err);
        }
      },
      async loadWhy() {
        try {
          this.why = await HR.get(`/api/tasks/${this.task.task_id}/why`);
          this.whyError = "";
        } catch (err) {
          this.whyError = err.text || String(err);
        }
      },
      // -- output ---------------------------------------------------------------------
      showStream(stream) {
        if (this.stream === stream) return;
        this.stream = stream;
        this.openLog();
      },
      closeLog() {
        if (this.follower) this.follower.abort();
        this.follower = null;
        this.following = false;
      },
      // The last lines, then (while the task may still print) the rest as it comes.
      async openLog() {
        this.closeLog();
        const box = this.$refs.log;
        if (!box || !this.task) return;
        box.textContent = "";
        this.logBytes = 0;
        this.logError = "";
        this.logNote = "";
        const controller = new AbortController();
        this.follower = controller;
        const base = `/api/tasks/${this.task.task_id}/${this.stream}`;
        try {
          const first = await HR.api("GET", base + "?tail=2000", null, { response: true, signal: controller.signal });
          const text = await first.text();
          if (controller.signal.aborted) return;
          this.append(text);
          if (text && first.headers.get("X-Next-Offset") > this.logBytes) {
            this.logNote = "Showing the last 2000 lines; download for the whole output.";
          }
          if (!ACTIVE.has(this.task.state)) return;
          const offset = first.headers.get("X-Next-Offset") || "0";
          this.following = true;
          await HR.follow(`${base}?offset=${offset}&follow=1`, (chunk) => this.append(chunk), controller.signal);
        } catch (err) {
          if (err.name !== "AbortError") this.logError = err.text || String(err);
        } finally {
          if (this.follower === controller) this.following = false;
        }
      },
      append(text) {
        if (!text) return;
        const box = this.$refs.log;
        if (!box) return;
        const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
        box.append(document.createTextNode(text)); // text, never markup: output is untrusted
        this.logBytes += text.length;
        // Keep the page light on a chatty task: the oldest text goes past ~2 MB.
        while (this.logBytes > 2e6 && box.firstChild) {
          const first = box.firstChild;
          const excess = this.logBytes - 2e6;
          if (first.textContent.length > excess) {
            // Cut inside the oldest piece: one huge chunk must not empty the box.
            first.textContent = first.textContent.slice(excess);
            this.logBytes -= excess;
          } else {
            this.logBytes -= first.textContent.length;
            first.remove();
          }
          this.logNote = "The oldest output was dropped from the page; download for all of it.";
        }
        if (atBottom) box.scrollTop = box.scrollHeight;
      },
      download(stream) {
        HR.download(`/api/tasks/${this.task.task_id}/${stream}`, `task-${this.task.number}.${stream}.txt`).catch((err) =>
          HR.toast(err.text || String(err), "error"),
        );
      },
      // -- formatting -------------------------------------------------------------------
      commandLine,
      spec() {
        const t = this.task;
        if (!t) return [];
        const rows = [
          ["Owner", t.owner],
          ["Name", t.name || "—"],
          ["Type", t.task_type],
          ["Command", t.redacted ? "redacted" : commandLine(t)],
          // The host records the default environment it resolved; null is a plain process.
          ["Container", t.container === null || t.container === "NULL" ? "NULL (a plain process)" : t.container],
          ["Cores", t.cores === 0 ? "0 (no core accounting)" : String(t.cores)],
          ["Memory", t.memory_bytes ? HR.fmt.bytes(t.memory_bytes) : "no limit"],
          ["Target", t.target || "automatic placement"],
          ["Node", t.node || "—"],
          ["NUMA", t.numa_id === null ? "—" : String(t.numa_id)],
          ["GPUs", t.gpu_ids.length ? t.gpu_ids.join(", ") : "—"],
          ["Privileged", t.privileged ? "yes" : "no"],
        ];
        if (t.redacted) {
          rows.push(["Environment", "redacted"], ["Mounts", "redacted"]);
        } else {
          const env = Object.entries(t.env || {});
          rows.push(["Environment", env.length ? env.map(([k, v]) => `${k}=${v}`).join("\n") : "—"]);
          rows.push(["Mounts", t.mounts.length ? t.mounts.map((m) => (typeof m === "string" ? m : `${m.host_path || m.source}:${m.container_path || m.target}${m.read_only ? ":ro" : ""}`)).join("\n") : "—"]);
        }
        if (t.job_id) rows.push(["Job", `${t.job_id} rank ${t.rank}`]);
        rows.push(["Batch", t.batch_id], ["Task id", t.task_id]);
        return rows;
      },
      times() {
        const t = this.task;
        if (!t) return [];
        return [
          ["Submitted", HR.fmt.time(t.submitted_at)],
          ["Placed", HR.fmt.time(t.placed_at)],
          ["Started", HR.fmt.time(t.started_at)],
          ["Finished", HR.fmt.time(t.finished_at)],
          ["Queue wait", HR.fmt.duration(t.queue_wait_s)],
          ["Start delay", HR.fmt.duration(t.start_delay_s)],
          ["Run time", HR.fmt.duration(t.run_time_s)],
          ["Exit code", t.exit_code === null ? "—" : String(t.exit_code)],
        ];
      },
      fmtTime: (v) => HR.fmt.time(v),
      since(s) {
        if (s === null || s === undefined) return "—";
        return s < 1 ? `${Math.round(s * 1000)}ms` : HR.fmt.duration(s);
      },
    }));
  });
})();
