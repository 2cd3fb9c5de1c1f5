// The history page (static/pages/history.html), for admins: the cluster as it was at
// any moment (GET /api/state?at=, a time slider over the log's seqs, kept in the URL as
// ?at= so a moment can be shared), the diff between two moments (GET /api/state/diff,
// ?a=&b=), and the live event feed with filters (GET /api/events, refreshed on change
// notices). Everyone else is told why not, and makes no admin request.
(function () {
  "use strict";

  const FEED_SIZE = 100;
  const QUEUED = new Set(["pending", "assigning"]);

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("historyPage", () => ({
      admin: false,
      error: "",
      lastSeq: 0,
      sliderSeq: 1,
      atText: "",
      atAsked: "",
      state: null,
      momentTime: null,
      loadingState: false,
      diffA: "",
      diffB: "",
      diff: null,
      diffError: "",
      filters: { kind: "", task: "", node: "", actor: "", heartbeats: false },
      events: [],
      feedLoaded: false,
      feedError: "",
      feedAfter: 0,
      _off: null,
      _slide: null,
      _asked: 0,

      async init() {
        this.admin = HR.isAdmin();
        if (!this.admin) return; // no admin request at all: the explanation is the page
        const q = HR.route.query;
        this.atAsked = q.get("at") || "";
        this.atText = this.atAsked;
        this.diffA = q.get("a") || "";
        this.diffB = q.get("b") || "";
        for (const k of ["kind", "task", "node", "actor"]) this.filters[k] = q.get(k) || "";
        this.filters.heartbeats = q.get("heartbeats") === "1";
        this._off = HR.onChange((batch) => this.changed(batch), { debounce: 300 });
        await Promise.all([this.loadState(), this.loadFeed()]);
        if (this.diffA) await this.loadDiff();
      },
      destroy() {
        if (this._off) this._off();
        clearTimeout(this._slide);
      },

      saveQuery() {
        const f = this.filters;
        HR.setQuery({
          at: this.atAsked,
          a: this.diff ? this.diffA : "",
          b: this.diff ? this.diffB : "",
          kind: f.kind,
          task: f.task,
          node: f.node,
          actor: f.actor,
          heartbeats: f.heartbeats ? "1" : "",
        });
      },

      // -- the time slider ---------------------------------------------------------------

      slid() {
        // While dragging: follow after a pause, so not every position is a request.
        clearTimeout(this._slide);
        this._slide = setTimeout(() => this.travelTo(String(this.sliderSeq)), 250);
      },
      step(delta) {
        this.sliderSeq = Math.min(Math.max(1, this.sliderSeq + delta), this.lastSeq);
        this.travelTo(String(this.sliderSeq));
      },
      travelTo(at) {
        clearTimeout(this._slide);
        this.atAsked = (at || "").trim();
        this.atText = this.atAsked;
        this.saveQuery();
        return this.loadState();
      },

      async loadState() {
        const mine = ++this._asked;
        this.loadingState = true;
        try {
          const state = await HR.get("/api/state", { at: this.atAsked });
          if (mine !== this._asked) return; // a later moment was asked meanwhile
          this.state = state;
          if (!this.atAsked) this.lastSeq = Math.max(this.lastSeq, state.seq);
          else if (!this.lastSeq) this.lastSeq = (await HR.get("/api/summary")).last_seq;
          this.sliderSeq = Math.max(1, state.seq);
          this.error = "";
          this.momentTime = null;
          if (state.seq > 0) {
            const event = await HR.get(`/api/events/${state.seq}`);
            if (mine === this._asked) this.momentTime = event.recorded_at;
          }
        } catch (err) {
          if (mine === this._asked) this.error = err.text || String(err);
        } finally {
          if (mine === this._asked) this.loadingState = false;
        }
      },

      get taskGroups() {
        const tasks = this.state ? this.state.tasks : [];
        return [
          {
            name: "running",
            title: "Running",
            empty: "No task was running.",
            tasks: tasks.filter((t) => !QUEUED.has(t.state)),
          },
          {
            name: "queued",
            title: "Queued (waiting for a node, or placed and starting)",
            empty: "No task was waiting.",
            tasks: tasks.filter((t) => QUEUED.has(t.state)),
          },
        ];
      },

      // -- the diff ------------------------------------------------------------------------

      async loadDiff() {
        this.diffError = "";
        try {
          this.diff = await HR.get("/api/state/diff", { a: this.diffA.trim(), b: this.diffB.trim() });
        } catch (err) {
          this.diff = null;
          this.diffError = err.text || String(err);
        }
        this.saveQuery();
      },
      get diffTasks() {
        if (!this.diff) return [];
        const d = this.diff;
        return [
          ...d.tasks_added.map((c) => ({ ...c, change: "added", mark: "+" })),
          ...d.tasks_changed.map((c) => ({ ...c, change: "changed", mark: "~" })),
          ...d.tasks_removed.map((c) => ({ ...c, change: "removed", mark: "−" })),
        ];
      },
      get diffNodes() {
        if (!this.diff) return [];
        const d = this.diff;
        return [
          ...d.nodes_added.map((c) => ({ ...c, change: "added", mark: "+" })),
          ...d.nodes_changed.map((c) => ({ ...c, change: "changed", mark: "~" })),
          ...d.nodes_removed.map((c) => ({ ...c, change: "removed", mark: "−" })),
        ];
      },
      get diffEmpty() {
        return this.diffTasks.length === 0 && this.diffNodes.length === 0;
      },
      yesNo(v) {
        return v === null || v === undefined ? "—" : v ? "yes" : "no";
      },
      gpuList(ids) {
        return ids && ids.length ? ids.join(",") : "none";
      },

      // -- the feed ------------------------------------------------------------------------

      feedParams() {
        const f = this.filters;
        const params = {
          kind: f.kind.trim(),
          task: f.task.trim(),
          node: f.node.trim(),
          actor: f.actor.trim(),
        };
        if (!f.heartbeats) params.exclude = "node.heartbeat";
        return params;
      },
      applyFilters() {
        this.saveQuery();
        return this.loadFeed();
      },
      clearFilters() {
        this.filters = { kind: "", task: "", node: "", actor: "", heartbeats: false };
        return this.applyFilters();
      },
      async loadFeed() {
        try {
          const page = await HR.get("/api/events", { ...this.feedParams(), tail: FEED_SIZE });
          this.events = page.events.slice().reverse();
          this.feedAfter = page.last_seq;
          this.lastSeq = Math.max(this.lastSeq, page.last_seq);
          this.feedError = "";
        } catch (err) {
          this.events = [];
          this.feedError = err.text || String(err);
        } finally {
          this.feedLoaded = true;
        }
      },
      async changed(batch) {
        const top = Math.max(...batch.map((n) => n.seq));
        const followingNow = !this.atAsked;
        this.lastSeq = Math.max(this.lastSeq, top);
        if (followingNow) this.sliderSeq = this.lastSeq;
        if (this.feedError) return;
        try {
          const page = await HR.get("/api/events", { ...this.feedParams(), after: this.feedAfter, limit: 1000 });
          this.feedAfter = page.next_after;
          if (page.events.length) {
            const seen = new Set(this.events.map((e) => e.seq));
            const fresh = page.events.filter((e) => !seen.has(e.seq)).reverse();
            this.events = [...fresh, ...this.events].slice(0, FEED_SIZE);
          }
        } catch (err) {
          this.feedError = err.text || String(err);
        }
        // The slider at "now" follows the cluster; at a past moment it stays there.
        if (followingNow && batch.some((n) => n.kind !== "node.heartbeat")) this.loadState();
      },

      taskOf(stream) {
        return stream && stream.startsWith("task:") ? stream.slice(5) : null;
      },
    }));
  });
})();
