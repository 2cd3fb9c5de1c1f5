// The nodes page (static/pages/nodes.html): every node as GET /api/nodes reports it
// (cores, memory, NUMA, GPUs with utilisation, memory and temperature from the last
// heartbeat, the tasks holding resources there). Live: read again on node and task
// change notices (heartbeats included, debounced), never on a timer.
(function () {
  "use strict";

  // "0-3,8-11" for [0,1,2,3,8,9,10,11].
  function ranges(cpus) {
    const sorted = [...(cpus || [])].sort((a, b) => a - b);
    const out = [];
    for (let i = 0; i < sorted.length; ) {
      let j = i;
      while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
      out.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
      i = j + 1;
    }
    return out.join(",");
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("nodesPage", () => ({
      nodes: [],
      loaded: false,
      error: "",
      updated: null,
      tick: 0,
      _off: null,

      async init() {
        this._off = HR.onChange(() => this.load(), {
          match: (n) => n.stream.startsWith("node:") || n.stream.startsWith("task:"),
          debounce: 500,
        });
        await this.load();
      },
      destroy() {
        if (this._off) this._off();
      },

      async load() {
        try {
          const answer = await HR.get("/api/nodes");
          this.nodes = answer.nodes;
          this.updated = new Date();
          this.error = "";
        } catch (err) {
          this.error = err.text || String(err);
        } finally {
          this.loaded = true;
        }
      },

      get online() {
        return this.nodes.filter((n) => n.online).length;
      },
      get updatedText() {
        return this.updated ? this.updated.toLocaleTimeString() : "—";
      },
      share(part, whole) {
        return whole > 0 ? Math.min(100, Math.round((100 * part) / whole)) : 0;
      },
      cpuRange(cpus) {
        return cpus && cpus.length ? `(${ranges(cpus)})` : "";
      },
      gpuUsage(node, id) {
        return node.gpu_usage.find((u) => u.id === id) || {};
      },
      temp(c) {
        return c === null || c === undefined ? "—" : `${Math.round(c)} °C`;
      },
      taskLabel(node, id) {
        const i = node.running_task_ids.indexOf(id);
        if (i >= 0 && node.running_task_numbers[i] !== undefined) return `task ${node.running_task_numbers[i]}`;
        return `task ${id.slice(0, 8)}`;
      },
      sensors(node) {
        return Object.entries(node.temperatures)
          .map(([k, v]) => `${k} ${Math.round(v)} °C`)
          .join(", ");
      },
    }));
  });
})();
