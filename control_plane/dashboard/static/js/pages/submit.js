// The submit page (static/pages/submit.html, "submitPage"): a form for POST /api/tasks.
//
// Targets are picked from the live nodes (GET /api/nodes, refreshed on node change
// notices) and written as the CLI's --target strings (node[:numa][::gpu,gpu]). The host
// checks everything; its answer's `field` puts the error next to the field it names.
(function () {
  "use strict";

  let nextKey = 1;

  function targetText(t) {
    if (!t.node) return "";
    let text = t.node;
    if (t.numa !== "" && t.numa !== null && t.numa !== undefined) text += ":" + t.numa;
    if (t.gpus && t.gpus.length) text += "::" + [...t.gpus].sort((a, b) => a - b).join(",");
    return text;
  }

  function lines(text) {
    return text.split("\n").filter((line) => line.trim() !== "");
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("submitPage", () => ({
      me: null,
      command: "",
      args: "",
      name: "",
      targets: [],
      container: "",
      containers: [],
      cores: 1,
      memory: "",
      privileged: false,
      env: [],
      mounts: "",
      nodes: [],
      nodesError: "",
      errors: {},
      error: "",
      busy: false,
      stop: null,
      init() {
        this.me = HR.me;
        this.loadNodes();
        HR.get("/api/environments/containers")
          .then((doc) => (this.containers = doc.containers || []))
          .catch(() => (this.containers = []));
        // Heartbeats change free resources often: a calm refresh is enough for pickers.
        this.stop = HR.onChange(() => this.loadNodes(), { match: "node:", debounce: 2000 });
      },
      destroy() {
        if (this.stop) this.stop();
      },
      async loadNodes() {
        try {
          const doc = await HR.get("/api/nodes");
          this.nodes = doc.nodes.sort((a, b) => a.name.localeCompare(b.name));
          this.nodesError = "";
        } catch (err) {
          this.nodesError = "the nodes could not be read: " + (err.text || err);
        }
      },
      node(name) {
        return this.nodes.find((n) => n.name === name) || null;
      },
      gpuUse(nodeName, id) {
        const n = this.node(nodeName);
        const use = n && n.gpu_usage.find((u) => u.id === id);
        if (!use) return "";
        return ` — ${Math.round(use.utilization_percent)}% busy, ${HR.fmt.bytes(use.memory_used_bytes)} used`;
      },
      addTarget() {
        const online = this.nodes.find((n) => n.online);
        this.targets.push({ key: nextKey++, node: online ? online.name : "", numa: "", gpus: [] });
      },
      addEnv() {
        this.env.push({ key: nextKey++, name: "", value: "" });
      },
      targetText,
      fmtBytes: (n) => HR.fmt.bytes(n),
      body() {
        const body = { command: this.command.trim(), args: lines(this.args) };
        if (this.name.trim()) body.name = this.name.trim();
        const targets = this.targets.map(targetText).filter((t) => t);
        if (targets.length) body.targets = targets;
        if (this.container) body.container = this.container;
        if (String(this.cores).trim() !== "") {
          const cores = Number(this.cores);
          // Sent as typed when it is not a whole number: the host names the field.
          body.cores = Number.isInteger(cores) ? cores : String(this.cores);
        }
        if (this.memory.trim()) body.memory = this.memory.trim();
        if (this.privileged) body.privileged = true;
        const env = {};
        for (const e of this.env) if (e.name !== "" || e.value !== "") env[e.name] = e.value;
        if (Object.keys(env).length) body.env = env;
        const mounts = lines(this.mounts).map((m) => m.trim());
        if (mounts.length) body.mounts = mounts;
        return body;
      },
      // Where the host's error goes: next to the field it names (a target's or a
      // variable's own row when there is one), else at the top of the form.
      place(err) {
        const field = err.field || "";
        const target = /^targets\[(\d+)\]/.exec(field);
        if (target && Number(target[1]) < this.targets.length) return { ["targets[" + target[1] + "]"]: err.message };
        if (field.startsWith("env.") && this.env.some((e) => "env." + e.name === field)) return { [field]: err.message };
        const root = field.split(/[.[]/)[0];
        const shown = ["command", "args", "name", "targets", "container", "cores", "memory", "privileged", "env", "mounts"];
        if (shown.includes(root)) return { [root]: root === field ? err.message : `${field}: ${err.message}` };
        return null;
      },
      async submit() {
        this.errors = {};
        this.error = "";
        if (!this.command.trim()) {
          this.errors = { command: "a command is needed" };
          document.getElementById("submit-command").focus();
          return;
        }
        this.busy = true;
        try {
          const done = await HR.post("/api/tasks", this.body());
          HR.toast(`submitted task${done.numbers.length > 1 ? "s" : ""} ${done.numbers.join(", ")}`, "ok");
          if (done.numbers.length === 1) HR.go(`/tasks/${done.numbers[0]}`);
          else HR.go(`/tasks?batch=${encodeURIComponent(done.batch_id)}`);
        } catch (err) {
          const placed = err.field ? this.place(err) : null;
          if (placed) {
            this.errors = placed;
            this.error = "The host refused the task: see the field marked below.";
          } else {
            this.error = err.text || String(err);
          }
        } finally {
          this.busy = false;
        }
      },
    }));
  });
})();
