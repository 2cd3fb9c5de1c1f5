// The VPS page (static/pages/vps.html, vpsPage): the user's VPS tasks with the exact ssh
// command to reach each through the host's SSH gateway (docs/vps.md), a form to start one
// with a registered or pasted key, and kill / pause / resume. Reloads on task notices.
(function () {
  "use strict";

  const ACTIVE = "pending,assigning,running,paused,unknown";

  // A host in `ssh -J user@host:port` (an IPv6 address goes in brackets).
  function hostPart(host) {
    return host && host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("vpsPage", () => ({
      tasks: [],
      loaded: false,
      loadError: "",
      showEnded: false,
      gateway: null,
      gatewayError: "",
      keys: [],
      nodes: [],
      // the form
      container: "",
      cores: 1,
      memory: "",
      target: "",
      name: "",
      keyChoice: "registered", // "registered" | "paste" | a key id
      pasted: "",
      submitting: false,
      submitError: null,
      unsubscribe: null,

      init() {
        this.showEnded = HR.route.query.get("ended") === "1";
        this.load();
        this.loadGateway();
        this.loadKeys();
        this.loadNodes();
        this.unsubscribe = HR.onChange(() => this.load(), { match: "task:", debounce: 150 });
      },
      destroy() {
        if (this.unsubscribe) this.unsubscribe();
      },

      async load() {
        try {
          const params = { limit: 1000, status: this.showEnded ? "" : ACTIVE };
          const answer = await HR.get("/api/tasks", params);
          this.tasks = answer.tasks.filter((t) => t.task_type === "vps");
          this.loadError = "";
        } catch (err) {
          this.loadError = err.text || String(err);
        } finally {
          this.loaded = true;
        }
      },
      async loadGateway() {
        try {
          this.gateway = await HR.get("/api/ssh");
        } catch (err) {
          this.gatewayError = err.text || String(err);
        }
      },
      async loadKeys() {
        try {
          this.keys = (await HR.get("/api/keys")).keys;
        } catch (_) {
          this.keys = [];
        }
        if (!this.keys.length && this.keyChoice === "registered") this.keyChoice = "paste";
      },
      async loadNodes() {
        try {
          const answer = await HR.get("/api/nodes");
          const nodes = Array.isArray(answer) ? answer : answer.nodes || [];
          // Where a VPS can run: online, with the Docker executor (a VPS is a container).
          this.nodes = nodes
            .filter((n) => n.online && (n.executors || []).includes("docker"))
            .map((n) => n.name);
        } catch (_) {
          this.nodes = [];
        }
      },
      endedChanged() {
        HR.setQuery({ ended: this.showEnded ? 1 : "" });
        this.load();
      },

      ref: (t) => (t.number !== null && t.number !== undefined ? t.number : t.task_id),
      jump() {
        const g = this.gateway;
        return g && g.enabled ? `${g.user}@${hostPart(g.host)}:${g.port}` : null;
      },
      // The command to type (docs/vps.md), or null when there is none to give yet.
      sshCommand(t) {
        if (t.state !== "running" || !t.sshd) return null;
        const jump = this.jump();
        return jump ? `ssh -J ${jump} root@vps-${this.ref(t)}` : `hakuriver ssh ${this.ref(t)}`;
      },
      knownHostsLine() {
        const g = this.gateway;
        if (!g || !g.enabled || !g.host_key) return "";
        const host = g.port === 22 ? hostPart(g.host) : `[${g.host}]:${g.port}`;
        return `${host} ${g.host_key}`;
      },
      connectNote(t) {
        if (t.redacted) return "another user's VPS";
        switch (t.state) {
          case "pending":
          case "assigning":
            return "starting…";
          case "paused":
            return "paused: resume it to connect";
          case "running":
            if (t.sshd === null || t.sshd === undefined) return "waiting for its sshd…";
            if (!t.sshd) return `no sshd in its image: hakuriver vps shell ${this.ref(t)}`;
            return this.jump() ? "" : "the SSH gateway is off: " + (this.gateway ? this.gateway.message : "");
          default:
            return t.message || "ended";
        }
      },
      sshdText(t) {
        if (t.sshd === null || t.sshd === undefined) return "—";
        return t.sshd ? "yes" : "no";
      },
      address(t) {
        return t.ssh_port ? `${t.ssh_address || t.node || ""}:${t.ssh_port}` : "—";
      },
      ago: (v) => HR.fmt.ago(v),
      fmtTime: (v) => HR.fmt.time(v),

      copy: (text, element) => HR.copy(text, element, true),

      async act(t, verb) {
        try {
          await HR.post(`/api/tasks/${encodeURIComponent(t.task_id)}/${verb}`);
          HR.toast(`VPS ${this.ref(t)}: ${verb} sent`, "ok");
        } catch (err) {
          HR.toast(err.text || String(err), "error");
        }
      },

      async submit() {
        this.submitError = null;
        const body = { task_type: "vps", cores: Number(this.cores) || 0 };
        if (this.container.trim()) body.container = this.container.trim();
        if (this.memory.trim()) body.memory = this.memory.trim();
        if (this.target.trim()) body.targets = [this.target.trim()];
        if (this.name.trim()) body.name = this.name.trim();
        if (this.keyChoice === "paste") {
          if (!this.pasted.trim()) {
            this.submitError = {
              field: "ssh_public_key",
              message: "paste an OpenSSH public key (ssh-ed25519 AAAA… you@laptop)",
            };
            return;
          }
          body.ssh_public_key = this.pasted.trim();
        } else if (this.keyChoice !== "registered") {
          const key = this.keys.find((k) => k.id === this.keyChoice);
          if (key) body.ssh_public_key = key.public_key + (key.comment ? " " + key.comment : "");
        }
        this.submitting = true;
        try {
          const answer = await HR.post("/api/tasks", body);
          const number = (answer.numbers || answer.task_ids || ["?"])[0];
          HR.toast(`VPS task ${number} submitted`, "ok");
          this.load();
        } catch (err) {
          this.submitError = { field: err.field || "", message: err.message || String(err) };
        } finally {
          this.submitting = false;
        }
      },
    }));
  });
})();
