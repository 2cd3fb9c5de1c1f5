// The admin page (static/pages/admin.html), admins only: users (add, role, disable), every
// user's tokens (create with an expiry, shown once; revoke), nodes (state, revoke, forget an
// offline one) and join tokens (create, shown once as the runner's command). Every change
// goes through the API, which decides; its refusals are shown as it words them.
(function () {
  "use strict";

  const TABS = ["users", "tokens", "nodes", "join"];
  const UNITS = { minutes: 60, hours: 3600, days: 86400 };
  // Events that change what this page shows (not heartbeats).
  const KINDS = [
    "user.",
    "token.",
    "node.registered",
    "node.online",
    "node.offline",
    "node.enrolled",
    "node.revoked",
    "node.forgotten",
  ];

  // A lifetime form {amount, unit} as the API's ttl_s (null: never expires).
  function ttl(form) {
    if (form.unit === "never") return null;
    const amount = Number(form.amount);
    if (!Number.isFinite(amount) || amount <= 0) {
      throw new HR.ApiError(400, "invalid", "ttl_s", "give a positive number, or choose never");
    }
    return Math.round(amount * UNITS[form.unit]);
  }

  function tokenState(t, now) {
    if (t.revoked) return "revoked";
    if (t.expires_at_us !== null && t.expires_at_us !== undefined && t.expires_at_us <= now) {
      return "expired";
    }
    if (t.uses_left === 0) return "used up";
    return "active";
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("adminPage", () => {
      let unsubscribe = null;

      return {
        tab: "users",
        users: [],
        tokens: [],
        nodes: [],
        loaded: false,
        errors: { users: "", tokens: "", nodes: "" },
        busy: false,
        // The secret of a token just made: shown once, until dismissed.
        secret: null, // {title, text, label, warning}
        copied: false,
        userForm: { name: "", role: "user", token: true, amount: 90, unit: "days" },
        userError: "",
        tokenForm: { user: "", name: "", amount: 90, unit: "days" },
        tokenError: "",
        tokenFilter: { user: "", kind: "user", ended: true },
        joinForm: { uses: 1, amount: 1, unit: "days" },
        joinError: "",
        ...HR.confirming(),

        init() {
          const wanted = HR.route.query.get("tab");
          this.tab = TABS.includes(wanted) ? wanted : "users";
          this.refresh();
          unsubscribe = HR.onChange(() => this.refresh(), {
            match: (n) => KINDS.some((k) => n.kind.startsWith(k)),
            debounce: 250,
          });
        },
        destroy() {
          if (unsubscribe) unsubscribe();
        },

        show(tab) {
          this.tab = tab;
          HR.setQuery(tab === "users" ? {} : { tab });
        },
        // Arrow keys move between the tabs (the WAI-ARIA tabs pattern).
        tabKey(event) {
          const i = TABS.indexOf(this.tab);
          const step = event.key === "ArrowRight" ? 1 : event.key === "ArrowLeft" ? -1 : 0;
          if (!step) return;
          const next = TABS[(i + step + TABS.length) % TABS.length];
          this.show(next);
          this.$nextTick(() => document.getElementById(`admin-tab-${next}`).focus());
        },

        async refresh() {
          const [users, tokens, nodes] = await Promise.allSettled([
            HR.get("/api/users"),
            HR.get("/api/tokens", { all: 1 }),
            HR.get("/api/nodes"),
          ]);
          const take = (result, key, into) => {
            if (result.status === "fulfilled") {
              this[into] = result.value[key];
              this.errors[into] = "";
            } else {
              this.errors[into] = result.reason.text || String(result.reason);
            }
          };
          take(users, "users", "users");
          take(tokens, "tokens", "tokens");
          take(nodes, "nodes", "nodes");
          if (!this.tokenForm.user && HR.me) this.tokenForm.user = HR.me.user;
          this.loaded = true;
        },

        fail(err) {
          HR.toast(err.text || String(err), "error");
        },

        // -- the secret, shown once ------------------------------------------------------

        reveal(secret) {
          this.secret = secret;
          this.copied = false;
          this.$nextTick(() => this.$refs.secret && this.$refs.secret.select());
        },
        async copy() {
          this.copied = await HR.copy(this.secret.text, this.$refs.secret);
        },
        forget() {
          this.secret = null;
        },

        // -- users -----------------------------------------------------------------------

        async addUser() {
          this.userError = "";
          this.busy = true;
          const name = this.userForm.name.trim();
          try {
            const lifetime = this.userForm.token ? ttl(this.userForm) : null;
            await HR.post("/api/users", { name, role: this.userForm.role });
            HR.toast(`added ${name} (${this.userForm.role})`, "ok");
            if (this.userForm.token) {
              const made = await HR.post("/api/tokens", { user: name, name: "first", ttl_s: lifetime });
              this.revealToken(made);
            }
            this.userForm = { ...this.userForm, name: "" };
            await this.refresh();
          } catch (err) {
            this.userError = err.text || String(err);
          } finally {
            this.busy = false;
          }
        },
        askRole(u) {
          const role = u.role === "admin" ? "user" : "admin";
          this.ask(
            role === "admin"
              ? `Make ${u.name} an admin? They can then manage users, nodes and environments and read every task.`
              : `Make ${u.name} a plain user? Their admin rights end now.`,
            role === "admin" ? "Make admin" : "Make user",
            async () => {
              try {
                await HR.post(`/api/users/${encodeURIComponent(u.name)}/role`, { role });
                HR.toast(`${u.name} is now ${role === "admin" ? "an admin" : "a user"}`, "ok");
                await this.refresh();
              } catch (err) {
                this.fail(err);
              }
            },
          );
        },
        askDisable(u) {
          this.ask(
            `Disable ${u.name}? Every token of theirs stops working at once, and their shells end. This cannot be undone.`,
            "Disable",
            async () => {
              try {
                await HR.post(`/api/users/${encodeURIComponent(u.name)}/disable`);
                HR.toast(`${u.name} is disabled`, "ok");
                await this.refresh();
              } catch (err) {
                this.fail(err);
              }
            },
          );
        },
        newTokenFor(u) {
          this.tokenForm.user = u.name;
          this.show("tokens");
          this.$nextTick(() => document.getElementById("token-name").focus());
        },
        liveTokens(u) {
          if (u.disabled) return "—";
          const now = Date.now() * 1000;
          return this.tokens.filter((t) => t.user === u.name && t.kind === "user" && tokenState(t, now) === "active").length;
        },

        // -- tokens ----------------------------------------------------------------------

        revealToken(made) {
          this.reveal({
            title: `Token ${made.id} for ${made.user}`,
            label: "The token",
            text: made.token,
            warning:
              `It will not be shown again: copy it now and give it to ${made.user}, who keeps it in ` +
              "~/.hakuriver/token (chmod 600) or $HAKURIVER_TOKEN. " +
              (made.expires_at_us ? `It expires ${HR.fmt.time(made.expires_at_us)}.` : "It never expires."),
          });
        },
        async createToken() {
          this.tokenError = "";
          this.busy = true;
          try {
            const body = { user: this.tokenForm.user, name: this.tokenForm.name.trim(), ttl_s: ttl(this.tokenForm) };
            const made = await HR.post("/api/tokens", body);
            this.revealToken(made);
            this.tokenForm = { ...this.tokenForm, name: "" };
            await this.refresh();
          } catch (err) {
            this.tokenError = err.text || String(err);
          } finally {
            this.busy = false;
          }
        },
        // A disabled user's tokens are refused whatever their own state says.
        state(t) {
          const state = tokenState(t, Date.now() * 1000);
          const owner = t.kind === "user" && this.users.find((u) => u.name === t.user);
          return state === "active" && owner && owner.disabled ? "user disabled" : state;
        },
        shownTokens() {
          const f = this.tokenFilter;
          return this.tokens
            .filter((t) => (f.kind ? t.kind === f.kind : true))
            .filter((t) => (f.user ? t.user === f.user : true))
            .filter((t) => f.ended || this.state(t) === "active")
            .sort((a, b) => b.issued_at_us - a.issued_at_us);
        },
        askRevoke(t) {
          const what = t.kind === "agent" ? `node ${t.node}'s credential` : t.kind === "join" ? "this join token" : `${t.user}'s token`;
          this.ask(
            `Revoke ${what} ${t.id}${t.name ? " (" + t.name + ")" : ""}? The host refuses it from now on.`,
            "Revoke",
            async () => {
              try {
                await HR.post(`/api/tokens/${encodeURIComponent(t.id)}/revoke`);
                HR.toast(`revoked ${t.id}`, "ok");
                await this.refresh();
              } catch (err) {
                this.fail(err);
              }
            },
          );
        },

        // -- nodes -----------------------------------------------------------------------

        // Every node the host knows, and those enrolled that never said hello, with their
        // credential's state (read from the agent tokens).
        nodeRows() {
          const now = Date.now() * 1000;
          const credentials = new Map();
          for (const t of this.tokens) {
            if (t.kind !== "agent" || !t.node) continue;
            const seen = credentials.get(t.node);
            if (!seen || t.issued_at_us > seen.issued_at_us) credentials.set(t.node, t);
          }
          const rows = this.nodes.map((n) => ({ name: n.name, node: n, credential: credentials.get(n.name) || null }));
          for (const [name, credential] of credentials) {
            if (!this.nodes.some((n) => n.name === name)) rows.push({ name, node: null, credential });
          }
          for (const row of rows) {
            const revoked = row.credential && tokenState(row.credential, now) !== "active";
            row.state = revoked ? "revoked" : row.node ? (row.node.online ? "online" : "offline") : "enrolled";
          }
          return rows.sort((a, b) => a.name.localeCompare(b.name));
        },
        askRevokeNode(row) {
          this.ask(
            `Revoke node ${row.name}? Its runner is disconnected and its credential refused from now on; its running tasks are lost. To take the machine back, make a join token.`,
            "Revoke node",
            async () => {
              try {
                await HR.post(`/api/nodes/${encodeURIComponent(row.name)}/revoke`);
                HR.toast(`revoked node ${row.name}`, "ok");
                await this.refresh();
              } catch (err) {
                this.fail(err);
              }
            },
          );
        },
        askForget(row) {
          this.ask(
            `Forget node ${row.name}? It leaves the node list; its tasks still holding resources there are recorded lost. Its credential keeps working unless you revoke it too.`,
            "Forget node",
            async (reason) => {
              try {
                const done = await HR.post(`/api/nodes/${encodeURIComponent(row.name)}/forget`, { reason: reason.trim() });
                const lost = done.tasks_lost.length ? ` (${done.tasks_lost.length} tasks lost)` : "";
                HR.toast(`forgot node ${row.name}${lost}`, "ok");
                await this.refresh();
              } catch (err) {
                this.fail(err);
              }
            },
            true,
          );
        },

        // -- join tokens -----------------------------------------------------------------

        joinTokens() {
          return this.tokens.filter((t) => t.kind === "join").sort((a, b) => b.issued_at_us - a.issued_at_us);
        },
        async createJoin() {
          this.joinError = "";
          this.busy = true;
          try {
            const uses = Number(this.joinForm.uses);
            const made = await HR.post("/api/tokens", { kind: "join", uses, ttl_s: ttl(this.joinForm) });
            const words = ["hakuriver", "runner", "--join", made.token, "--host", made.host_url || location.origin];
            if (made.ca_fingerprint) words.push("--ca-fingerprint", made.ca_fingerprint);
            this.reveal({
              title: `Join token ${made.id}`,
              label: "Run this on the new node",
              text: words.join(" "),
              warning:
                `Good for ${made.uses_left} node${made.uses_left === 1 ? "" : "s"}, ` +
                (made.expires_at_us ? `until ${HR.fmt.time(made.expires_at_us)}` : "never expires") +
                ". It will not be shown again (the host keeps only its digest): copy the command now.",
            });
            await this.refresh();
          } catch (err) {
            this.joinError = err.text || String(err);
          } finally {
            this.busy = false;
          }
        },

        when(us) {
          return us ? HR.fmt.time(us) : "—";
        },
        expires(t) {
          return t.expires_at_us ? HR.fmt.time(t.expires_at_us) : "never";
        },
      };
    });
  });
})();
