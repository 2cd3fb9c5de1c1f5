// The environments page (static/pages/environments.html), admins only: the host's
// environment containers (create, start, stop, delete), packaging one as a tarball with
// its progress streamed line by line, the tarballs, and a terminal into a container.
(function () {
  "use strict";

  // Events that change what this page shows (shells and runners' syncs do not).
  const CHANGES = new Set([
    "env.container_created",
    "env.container_started",
    "env.container_stopped",
    "env.container_deleted",
    "env.packaged",
  ]);
  const STEPS = { commit: "committing the container", save: "saving the image", prune: "pruning older tarballs" };
  // The steps of create-tar in order, as the progress card lists them.
  const ORDER = [
    ["commit", "commit"],
    ["save", "save"],
    ["prune", "prune"],
    ["done", "recorded"],
  ];

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("environmentsPage", () => {
      // The open terminal lives outside Alpine's reactive data: xterm's objects must not be
      // wrapped in proxies.
      let shell = null;
      let unsubscribe = null;
      const packing = new Map(); // name → AbortController of a running create-tar

      return {
        containers: [],
        tarballs: [],
        folder: "",
        loaded: false,
        error: "",
        tarError: "",
        form: { name: "", image: "" },
        formError: "",
        creating: false,
        busy: {}, // container name → the action running on it
        progress: {}, // container name → {step, label, bytes, total, done, error, packaged}
        shellName: null,
        shellState: "",
        ...HR.confirming(),

        init() {
          this.refresh();
          unsubscribe = HR.onChange(() => this.refresh(), {
            match: (n) => CHANGES.has(n.kind),
            debounce: 250,
          });
        },
        destroy() {
          if (unsubscribe) unsubscribe();
          for (const controller of packing.values()) controller.abort();
          this.closeShell();
        },

        async refresh() {
          const [containers, tarballs] = await Promise.allSettled([
            HR.get("/api/environments/containers"),
            HR.get("/api/environments/tarballs"),
          ]);
          if (containers.status === "fulfilled") {
            this.containers = containers.value.containers;
            this.error = "";
          } else {
            this.error = containers.reason.text || String(containers.reason);
          }
          if (tarballs.status === "fulfilled") {
            this.tarballs = tarballs.value.tarballs;
            this.folder = tarballs.value.folder;
            this.tarError = "";
          } else {
            this.tarError = tarballs.reason.text || String(tarballs.reason);
          }
          this.loaded = true;
        },

        running(c) {
          return c.status === "running";
        },
        created(c) {
          return HR.fmt.time(c.created);
        },

        async create() {
          this.formError = "";
          this.creating = true;
          try {
            const made = await HR.post("/api/environments/containers", {
              name: this.form.name.trim(),
              image: this.form.image.trim(),
            });
            HR.toast(`created ${made.name} from ${made.image}`, "ok");
            this.form = { name: "", image: "" };
            await this.refresh();
          } catch (err) {
            this.formError = err.text || String(err);
          } finally {
            this.creating = false;
          }
        },

        async act(c, action) {
          this.busy = { ...this.busy, [c.name]: action };
          try {
            if (action === "delete") {
              await HR.api("DELETE", `/api/environments/containers/${encodeURIComponent(c.name)}`);
              if (this.shellName === c.name) this.closeShell();
            } else {
              await HR.post(`/api/environments/containers/${encodeURIComponent(c.name)}/${action}`);
            }
            HR.toast(`${c.name}: ${action === "delete" ? "deleted" : action + "ed"}`, "ok");
            await this.refresh();
          } catch (err) {
            HR.toast(`${c.name}: ${err.text || err}`, "error");
          } finally {
            const rest = { ...this.busy };
            delete rest[c.name];
            this.busy = rest;
          }
        },

        // -- confirmations (HR.confirming: ask, answer) -----------------------------------

        askStop(c) {
          this.ask(
            `Stop ${c.name}? Its changes are kept; open shells end.`,
            "Stop",
            () => this.act(c, "stop"),
          );
        },
        askDelete(c) {
          this.ask(
            `Delete the container of ${c.name}? Changes not packaged with "Package" are lost; its tarballs stay.`,
            "Delete",
            () => this.act(c, "delete"),
          );
        },

        // -- create-tar: NDJSON progress, shown as it streams ------------------------------

        async pack(c) {
          if (packing.has(c.name)) return;
          const controller = new AbortController();
          packing.set(c.name, controller);
          const show = (fields) => {
            const before = this.progress[c.name] || { seen: [] };
            const seen = fields.step && !before.seen.includes(fields.step) ? [...before.seen, fields.step] : before.seen;
            this.progress = { ...this.progress, [c.name]: { ...before, ...fields, seen } };
          };
          this.dismiss(c.name);
          show({ step: "start", label: "starting", bytes: 0, total: 0, done: false, error: "", packaged: null });
          let buffered = "";
          const handle = (line) => {
            if (!line.trim()) return;
            let step;
            try {
              step = JSON.parse(line);
            } catch (_) {
              return;
            }
            if (step.step === "done") {
              show({ step: "done", label: "packaged", done: true, packaged: step.packaged });
            } else if (step.step === "error") {
              const where = step.field ? `${step.field}: ` : "";
              show({ step: "error", label: "failed", done: true, error: where + step.message });
            } else {
              show({
                step: step.step,
                label: STEPS[step.step] || step.step,
                bytes: step.bytes ?? this.progress[c.name].bytes,
                total: step.total ?? this.progress[c.name].total,
              });
            }
          };
          try {
            await HR.api("POST", `/api/environments/${encodeURIComponent(c.name)}/tar`, {}, {
              response: true,
              signal: controller.signal,
            }).then(async (answer) => {
              const reader = answer.body.getReader();
              const decoder = new TextDecoder();
              for (;;) {
                const { value, done } = await reader.read();
                if (done) break;
                buffered += decoder.decode(value, { stream: true });
                const lines = buffered.split("\n");
                buffered = lines.pop();
                lines.forEach(handle);
              }
              handle(buffered);
            });
            const last = this.progress[c.name];
            if (!last.done) show({ step: "error", label: "failed", done: true, error: "the host ended the answer early" });
            if (last.packaged) HR.toast(`packaged ${c.name}: ${last.packaged.tarball}`, "ok");
          } catch (err) {
            if (err.name !== "AbortError") {
              show({ step: "error", label: "failed", done: true, error: err.text || String(err) });
            }
          } finally {
            packing.delete(c.name);
            this.refresh();
          }
        },
        packingNow(c) {
          const p = this.progress[c.name];
          return !!p && !p.done;
        },
        percent(p) {
          if (!p) return 0;
          if (p.step === "done") return 100;
          if (!p.total) return 0;
          return Math.min(100, Math.round((100 * p.bytes) / p.total));
        },
        progressText(p) {
          if (p.step === "save" && p.total) {
            return `${p.label}: ${HR.fmt.bytes(p.bytes)} of ${HR.fmt.bytes(p.total)} (${this.percent(p)}%)`;
          }
          if (p.step === "save") return `${p.label}: ${HR.fmt.bytes(p.bytes)}`;
          if (p.step === "done" && p.packaged) {
            return `packaged as ${p.packaged.tarball} (${HR.fmt.bytes(p.packaged.size_bytes)})`;
          }
          return p.label;
        },
        steps(p) {
          return ORDER.map(([step, label]) => ({ step, label, seen: p.seen.includes(step) }));
        },
        progressEntries() {
          return Object.entries(this.progress).map(([name, p]) => ({ name, p }));
        },
        dismiss(name) {
          const rest = { ...this.progress };
          delete rest[name];
          this.progress = rest;
        },

        // -- the terminal ----------------------------------------------------------------

        openShell(c) {
          this.closeShell();
          this.shellName = c.name;
          this.shellState = "connecting";
          // Wait for Alpine to show the terminal's box: xterm measures it when it opens.
          this.$nextTick(() => {
            const box = this.$refs.terminal;
            const path = `/api/environments/${encodeURIComponent(c.name)}/shell`;
            const opened = HR.terminal(box, path, {
              onControl: (control) => {
                if (control.type === "exit") this.shellState = `exited (${control.code ?? "?"})`;
                if (control.type === "error") this.shellState = `refused: ${control.message}`;
              },
              onClose: () => {
                if (this.shellState === "connected" || this.shellState === "connecting") {
                  this.shellState = "closed";
                }
              },
            });
            opened.socket.addEventListener("open", () => {
              this.shellState = "connected";
              opened.term.focus();
            });
            shell = opened;
            box.hrTerminal = opened.term; // tests read the screen from xterm's buffer
          });
        },
        closeShell() {
          if (shell) {
            shell.dispose();
            shell = null;
          }
          this.shellName = null;
          this.shellState = "";
        },

        tarTime(t) {
          return HR.fmt.time(t.timestamp * 1000);
        },
        shortSha(t) {
          return t.sha256 ? t.sha256.slice(0, 12) : "—";
        },
      };
    });
  });
})();
