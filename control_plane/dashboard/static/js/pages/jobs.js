// The jobs pages: the list with its YAML submit form (static/pages/jobs.html, jobsPage) and
// one job in detail (static/pages/job.html, jobPage): its ranks, why it waits, its
// combined logs (node-<rank> | ...) and stop. Both reload on the change notices of jobs and
// tasks (a rank is a task): nothing polls.
(function () {
  "use strict";

  const ENDED = new Set(["completed", "failed", "stopped"]);
  // What the page keeps of a log: the tail past this many characters (the download has all).
  const MAX_LOG_CHARS = 2_000_000;
  const EXAMPLE = [
    "name: hello",
    "num_nodes: 2",
    "resources:",
    '  cpus: "1"',
    "  image_id: NULL        # plain processes; or an image every node has",
    "setup: |",
    '  echo "setup on rank $NODE_RANK"',
    "run: |",
    '  echo "hello from rank $NODE_RANK of $NUM_NODES"',
    "",
  ].join("\n");

  // "resources.memory (line 7): ..." -> 7 (the parser's message says where; docs/jobs.md).
  function lineOf(message) {
    const found = /\(line (\d+)\)/.exec(message || "");
    return found ? Number(found[1]) : null;
  }

  function parseEnv(text) {
    const env = {};
    const lines = text.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i].trim();
      if (!line || line.startsWith("#")) continue;
      const eq = line.indexOf("=");
      if (eq <= 0) {
        throw new HR.ApiError(0, "invalid", "env", `line ${i + 1}: '${line}' is not NAME=VALUE`);
      }
      env[line.slice(0, eq).trim()] = line.slice(eq + 1);
    }
    return env;
  }

  function rankSummary(job) {
    const counts = {};
    for (const r of job.ranks || []) counts[r.state] = (counts[r.state] || 0) + 1;
    return Object.entries(counts)
      .map(([state, n]) => `${n} ${state}`)
      .join(", ");
  }

  document.addEventListener("alpine:init", () => {
    // -- the list and the submit form -------------------------------------------------------

    window.Alpine.data("jobsPage", () => ({
      jobs: [],
      total: 0,
      loaded: false,
      loadError: "",
      allUsers: false,
      status: "",
      search: "",
      yaml: "",
      name: "",
      envText: "",
      fileName: "",
      submitting: false,
      submitError: null, // {field, line, message}
      notes: [],
      example: EXAMPLE,
      unsubscribe: null,

      init() {
        const q = HR.route.query;
        this.allUsers = q.get("all_users") === "1" && HR.isAdmin();
        this.status = q.get("status") || "";
        this.search = q.get("q") || "";
        this.load();
        this.unsubscribe = HR.onChange(() => this.load(), {
          match: (n) => n.stream.startsWith("job:") || n.stream.startsWith("task:"),
          debounce: 200,
        });
      },
      destroy() {
        if (this.unsubscribe) this.unsubscribe();
      },

      isAdmin() {
        return HR.isAdmin();
      },
      async load() {
        try {
          const answer = await HR.get("/api/jobs", {
            details: 1,
            all_users: this.allUsers ? 1 : "",
          });
          this.jobs = answer.jobs;
          this.total = answer.total;
          this.loadError = "";
        } catch (err) {
          this.loadError = err.text || String(err);
        } finally {
          this.loaded = true;
        }
      },
      filtersChanged() {
        HR.setQuery({ all_users: this.allUsers ? 1 : "", status: this.status, q: this.search });
      },
      scopeChanged() {
        this.filtersChanged();
        this.load();
      },
      get shown() {
        const needle = this.search.trim().toLowerCase();
        return this.jobs.filter(
          (j) =>
            (!this.status || j.status === this.status) &&
            (!needle ||
              j.name.toLowerCase().includes(needle) ||
              j.job_id.includes(needle) ||
              j.owner.toLowerCase().includes(needle)),
        );
      },
      ranks: rankSummary,
      nodesOf(job) {
        return job.nodes.length ? job.nodes.join(", ") : "—";
      },
      fmtTime: (v) => HR.fmt.time(v),
      ago: (v) => HR.fmt.ago(v),
      took(job) {
        if (!job.run_at && !job.placed_at) return "—";
        const start = new Date(job.placed_at || job.run_at).getTime();
        const end = job.finished_at ? new Date(job.finished_at).getTime() : Date.now();
        return HR.fmt.duration((end - start) / 1000);
      },
      ended: (job) => ENDED.has(job.status),

      useExample() {
        this.yaml = EXAMPLE;
        this.fileName = "";
      },
      readFile(event) {
        const file = event.target.files && event.target.files[0];
        if (!file) return;
        if (file.size > 256 * 1024) {
          this.submitError = {
            field: "yaml",
            line: null,
            message: `${file.name} is ${HR.fmt.bytes(file.size)}; a job file holds at most 256 KiB`,
          };
          return;
        }
        const reader = new FileReader();
        reader.onload = () => {
          this.yaml = String(reader.result);
          this.fileName = file.name;
          this.submitError = null;
        };
        reader.onerror = () => {
          this.submitError = { field: "yaml", line: null, message: `cannot read ${file.name}` };
        };
        reader.readAsText(file);
      },
      async submit() {
        this.submitError = null;
        this.notes = [];
        if (!this.yaml.trim()) {
          this.submitError = { field: "yaml", line: null, message: "paste or upload a job file" };
          return;
        }
        this.submitting = true;
        try {
          const body = { yaml: this.yaml, env: parseEnv(this.envText) };
          if (this.name.trim()) body.name = this.name.trim();
          const answer = await HR.post("/api/jobs", body);
          const ignored = Object.keys(answer.ignored || {});
          const said = [...(answer.warnings || [])];
          if (ignored.length) said.push("ignored: " + ignored.join(", "));
          HR.toast(`Job ${answer.job_id} submitted (${answer.num_nodes} node(s))`, "ok");
          for (const line of said) HR.toast(line, "info");
          HR.go(`/jobs/${answer.job_id}`);
        } catch (err) {
          this.submitError = {
            field: err.field || "",
            line: lineOf(err.message),
            message: err.message || String(err),
          };
          this.$nextTick(() => this.showLine(this.submitError.line));
        } finally {
          this.submitting = false;
        }
      },
      // Select the line the parser named in the text area, so it is found at once.
      showLine(line) {
        const area = this.$refs.yaml;
        if (!area || !line) return;
        const lines = this.yaml.split("\n");
        let start = 0;
        for (let i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
        const end = start + (lines[line - 1] || "").length;
        area.focus();
        area.setSelectionRange(start, end);
      },
      async stop(job) {
        try {
          await HR.post(`/api/jobs/${job.job_id}/stop`);
          HR.toast(`Stopping job ${job.job_id}`, "ok");
        } catch (err) {
          HR.toast(err.text || String(err), "error");
        }
      },
    }));

    // -- one job ------------------------------------------------------------------------------

    window.Alpine.data("jobPage", () => ({
      id: HR.route.id,
      job: null,
      notFound: false,
      loadError: "",
      log: "",
      logNote: "",
      rank: "",
      following: false,
      confirming: false,
      stopping: false,
      unsubscribe: null,
      abort: null,
      logGeneration: 0,

      async init() {
        this.rank = HR.route.query.get("rank") || "";
        await this.load();
        if (this.job) this.startLogs();
        this.unsubscribe = HR.onChange(() => this.changed(), {
          match: (n) =>
            n.stream === `job:${this.id}` ||
            (this.job && this.job.ranks.some((r) => n.stream === `task:${r.task_id}`)),
          debounce: 150,
        });
      },
      destroy() {
        if (this.unsubscribe) this.unsubscribe();
        this.stopFollowing();
      },

      async load() {
        try {
          this.job = await HR.get(`/api/jobs/${encodeURIComponent(this.id)}`);
          this.loadError = "";
        } catch (err) {
          if (err.status === 404 || err.status === 400) this.notFound = true;
          else this.loadError = err.text || String(err);
        }
      },
      async changed() {
        const wasEnded = this.job && ENDED.has(this.job.status) && this.job.phase === "ended";
        await this.load();
        // Not following (it ended, or the follow broke): read the logs again.
        if (!this.following && !wasEnded) this.readLogs();
      },
      get ended() {
        return !!this.job && ENDED.has(this.job.status);
      },
      get finished() {
        return !!this.job && this.job.phase === "ended";
      },
      logPath(extra) {
        const params = { rank: this.rank, ...extra };
        const q = HR.query(params);
        return `/api/jobs/${encodeURIComponent(this.id)}/logs` + (q ? "?" + q : "");
      },
      setLog(text, cut = false) {
        this.log = text.length > MAX_LOG_CHARS ? text.slice(-MAX_LOG_CHARS) : text;
        this.logNote =
          cut || text.length > MAX_LOG_CHARS ? "Only the end is shown: download the logs for all." : "";
        this.$nextTick(() => {
          const box = this.$refs.log;
          if (box && this.following) box.scrollTop = box.scrollHeight;
        });
      },
      stopFollowing() {
        if (this.abort) this.abort.abort();
        this.abort = null;
        this.following = false;
      },
      // Follow while the job runs (the host ends the answer when it ends), else read once.
      startLogs() {
        this.stopFollowing();
        if (this.finished) {
          this.readLogs();
          return;
        }
        const mine = ++this.logGeneration;
        const abort = new AbortController();
        this.abort = abort;
        this.following = true;
        let text = "";
        let cut = false;
        HR.follow(this.logPath({ follow: 1 }), (chunk) => {
          if (mine !== this.logGeneration) return;
          // Only the end is kept: a long job's log must not grow the page without bound.
          text += chunk;
          if (text.length > MAX_LOG_CHARS) {
            text = text.slice(-MAX_LOG_CHARS);
            cut = true;
          }
          this.setLog(text, cut);
        }, abort.signal)
          .catch((err) => {
            if (mine === this.logGeneration) this.logNote = "Following stopped: " + (err.text || err);
          })
          .finally(() => {
            if (mine !== this.logGeneration || abort.signal.aborted) return;
            this.following = false;
            this.abort = null;
            this.readLogs(); // the whole of it, once more: nothing missed at the end
          });
      },
      async readLogs() {
        const mine = ++this.logGeneration;
        try {
          const answer = await HR.api("GET", this.logPath({}), null, { response: true });
          const text = await answer.text();
          if (mine === this.logGeneration) this.setLog(text);
        } catch (err) {
          if (mine === this.logGeneration) this.logNote = err.text || String(err);
        }
      },
      rankChanged() {
        HR.setQuery({ rank: this.rank });
        this.log = "";
        this.startLogs();
      },
      download() {
        const suffix = this.rank === "" ? "" : `-rank${this.rank}`;
        HR.download(this.logPath({}), `job-${this.id}${suffix}.log`).catch((err) =>
          HR.toast(err.text || String(err), "error"),
        );
      },
      async stop() {
        this.stopping = true;
        try {
          await HR.post(`/api/jobs/${encodeURIComponent(this.id)}/stop`);
          HR.toast(`Stopping job ${this.id}`, "ok");
          this.confirming = false;
          await this.load();
        } catch (err) {
          HR.toast(err.text || String(err), "error");
        } finally {
          this.stopping = false;
        }
      },
      ranks: rankSummary,
      fmtTime: (v) => HR.fmt.time(v),
      bytes: (v) => HR.fmt.bytes(v),
      code: (v) => (v === null || v === undefined ? "—" : String(v)),
    }));
  });
})();
