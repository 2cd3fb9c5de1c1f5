// HakuRiver dashboard: the shell every page shares (window.HR).
//
// - HR.api(method, path, body, opts): the JSON API with the session cookie; changes carry
//   the CSRF token. Rejects with HR.ApiError {status, error, field, message}; a 401 sends
//   the page to /login.
// - HR.me: {user, role, csrf} once logged in (HR.ready resolves with it).
// - HR.onChange(fn, {match, debounce}): change notices from /api/events/changes (one
//   EventSource for the whole page): fn(notices) after `debounce` ms with the notices
//   {seq, kind, stream} matching `match` (a function, or a stream/kind prefix string).
//   Returns the unsubscribe function; pages call it in destroy().
// - HR.go(path), HR.route {page, id, query}, HR.setQuery(obj): routing with the state in
//   the URL (replaceState; no reload).
// - HR.fmt.{time, ago, duration, bytes, pct}: times in the viewer's zone.
// - HR.toast(message, kind), HR.download(path, filename), HR.follow(path, onText, signal),
//   HR.terminal(element, wsPath): a terminal on one of the shell websockets.
(function () {
  "use strict";

  class ApiError extends Error {
    constructor(status, error, field, message) {
      super(message || error || `HTTP ${status}`);
      this.status = status;
      this.error = error;
      this.field = field;
    }
    get text() {
      return this.field ? `${this.field}: ${this.message}` : this.message;
    }
  }

  const PAGES = {
    "": "overview",
    login: "login",
    nodes: "nodes",
    tasks: "tasks",
    submit: "submit",
    jobs: "jobs",
    vps: "vps",
    environments: "environments",
    history: "history",
    admin: "admin",
    reference: "reference",
  };
  const DETAIL = { tasks: "task", jobs: "job" };
  const ADMIN_PAGES = new Set(["environments", "admin"]);

  const HR = {
    ApiError,
    me: null,
    route: { page: "overview", id: null, query: new URLSearchParams() },
  };
  let readyResolve;
  HR.ready = new Promise((resolve) => (readyResolve = resolve));

  // -- the API ----------------------------------------------------------------------------

  HR.api = async function (method, path, body, opts = {}) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, credentials: "same-origin", signal: opts.signal };
    // The session's key goes with every request: the cookie alone is no session.
    const key = sessionKey();
    if (key) headers["X-CSRF-Token"] = key;
    if (body !== undefined && body !== null) {
      if (opts.raw) {
        init.body = body;
        headers["Content-Type"] = opts.contentType || "application/octet-stream";
      } else {
        init.body = JSON.stringify(body);
        headers["Content-Type"] = "application/json";
      }
    }
    let answer;
    try {
      answer = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError(0, "unreachable", null, "the host does not answer: " + err.message);
    }
    if (opts.response) {
      if (!answer.ok) throw await errorOf(answer);
      return answer;
    }
    if (!answer.ok) {
      const error = await errorOf(answer);
      const ended = answer.status === 401 || (answer.status === 403 && error.field === "x-csrf-token");
      if (ended && !opts.noRedirect && HR.route.page !== "login") {
        HR.me = null;
        HR.go("/login?next=" + encodeURIComponent(location.pathname + location.search));
      }
      throw error;
    }
    if (answer.status === 204) return null;
    const text = await answer.text();
    return text ? JSON.parse(text) : null;
  };
  HR.get = (path, params) => HR.api("GET", params ? path + "?" + query(params) : path);
  HR.post = (path, body) => HR.api("POST", path, body === undefined ? {} : body);

  async function errorOf(answer) {
    let doc = null;
    try {
      doc = await answer.json();
    } catch (_) {
      /* not JSON */
    }
    if (doc && typeof doc === "object") {
      return new ApiError(answer.status, doc.error, doc.field, doc.message);
    }
    return new ApiError(answer.status, "http_" + answer.status, null, `HTTP ${answer.status}`);
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "") continue;
      if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
      else q.set(k, v);
    }
    return q.toString();
  }
  HR.query = query;

  // -- login state -------------------------------------------------------------------------

  // The session's key, kept in this origin's storage (shared by its tabs, never sent as a
  // cookie: another port of this host name cannot read it).
  const KEY = "hakuriver.session-key";
  function sessionKey() {
    if (HR.me && HR.me.csrf) return HR.me.csrf;
    try {
      return localStorage.getItem(KEY);
    } catch (_) {
      return null;
    }
  }
  function keepKey(key) {
    try {
      if (key) localStorage.setItem(KEY, key);
      else localStorage.removeItem(KEY);
    } catch (_) {
      /* storage refused: this tab keeps it in HR.me */
    }
  }

  HR.loadMe = async function () {
    if (!sessionKey()) {
      HR.me = null;
    } else {
      try {
        HR.me = await HR.api("GET", "/api/ui/session", null, { noRedirect: true });
      } catch (err) {
        HR.me = null;
        if (err.status === 401 || err.status === 403) keepKey(null);
      }
    }
    document.dispatchEvent(new CustomEvent("hr:me", { detail: HR.me }));
    return HR.me;
  };
  HR.login = async function (body) {
    const me = await HR.api("POST", "/api/ui/login", body, { noRedirect: true });
    keepKey(me.csrf);
    HR.me = me;
    document.dispatchEvent(new CustomEvent("hr:me", { detail: HR.me }));
    connectChanges();
    return me;
  };
  HR.logout = async function () {
    try {
      await HR.api("POST", "/api/ui/logout", {}, { noRedirect: true });
    } finally {
      HR.me = null;
      keepKey(null);
      disconnectChanges();
      document.dispatchEvent(new CustomEvent("hr:me", { detail: null }));
      HR.go("/login");
    }
  };
  HR.isAdmin = () => !!(HR.me && HR.me.role === "admin");

  // -- live changes -----------------------------------------------------------------------

  let source = null;
  let retry = null;
  let backoff = 1000;
  let awayFrom = null; // the last seq seen when the tab was hidden (null: it was not)
  const listeners = new Set();
  HR.lastSeq = 0;

  function deliver(notice, all) {
    for (const listener of listeners) listener.push(notice, all);
  }

  function connectChanges() {
    if (source || !HR.me || document.hidden) return;
    const params = { csrf: sessionKey() };
    if (awayFrom !== null && HR.lastSeq > 0) params.after = HR.lastSeq;
    const resume = awayFrom !== null;
    awayFrom = null;
    source = new EventSource("/api/events/changes?" + query(params));
    source.onmessage = (message) => {
      let notice;
      try {
        notice = JSON.parse(message.data);
      } catch (_) {
        return;
      }
      if (notice.kind === "resync") {
        deliver(notice, true); // too much was missed: every page reads its data again
        return;
      }
      HR.lastSeq = Math.max(HR.lastSeq, notice.seq || 0);
      deliver(notice, false);
    };
    source.onopen = () => {
      backoff = 1000;
      document.dispatchEvent(new CustomEvent("hr:live", { detail: true }));
      // Back from hidden without a seq to resume from: the pages read everything again.
      if (resume && !params.after) deliver({ seq: 0, kind: "resync", stream: "" }, true);
    };
    source.onerror = () => {
      document.dispatchEvent(new CustomEvent("hr:live", { detail: false }));
      if (source && source.readyState === EventSource.CLOSED) {
        // Refused (a 4xx: logged out, too many streams) or gone: EventSource does not
        // retry those by itself. Check the session, then try again, less and less often.
        source = null;
        awayFrom = HR.lastSeq;
        clearTimeout(retry);
        retry = setTimeout(async () => {
          retry = null;
          if (await HR.loadMe()) connectChanges();
          else if (HR.route.page !== "login") HR.go("/login");
        }, backoff);
        backoff = Math.min(backoff * 2, 30000);
      }
    };
  }
  function disconnectChanges() {
    clearTimeout(retry);
    retry = null;
    if (source) source.close();
    source = null;
  }
  // A hidden tab gives its connection back (browsers allow 6 per host over HTTP/1.1) and
  // catches up when shown again.
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      if (source) {
        disconnectChanges();
        awayFrom = HR.lastSeq;
      }
    } else if (HR.me) {
      connectChanges();
    }
  });

  HR.onChange = function (fn, opts = {}) {
    const match =
      typeof opts.match === "function"
        ? opts.match
        : typeof opts.match === "string"
          ? (n) => n.stream.startsWith(opts.match) || n.kind.startsWith(opts.match)
          : () => true;
    const wait = opts.debounce === undefined ? 100 : opts.debounce;
    let pending = [];
    let timer = null;
    const listener = {
      push(notice, all) {
        if (!all && !match(notice)) return;
        pending.push(notice);
        if (timer === null) {
          timer = setTimeout(() => {
            timer = null;
            const batch = pending;
            pending = [];
            try {
              fn(batch);
            } catch (err) {
              console.error(err);
            }
          }, wait);
        }
      },
    };
    listeners.add(listener);
    return () => {
      listeners.delete(listener);
      if (timer !== null) clearTimeout(timer);
    };
  };

  // -- routing -----------------------------------------------------------------------------

  function parseRoute() {
    const parts = location.pathname.replace(/^\/+|\/+$/g, "").split("/");
    const head = parts[0] || "";
    let page = PAGES[head] || "notfound";
    let id = null;
    if (parts.length > 1 && DETAIL[head]) {
      page = DETAIL[head];
      id = decodeURIComponent(parts.slice(1).join("/"));
    } else if (parts.length > 1) {
      page = "notfound";
    }
    return { page, id, query: new URLSearchParams(location.search) };
  }

  const templates = {};
  async function template(page) {
    if (!(page in templates)) {
      const answer = await fetch(`/static/pages/${page}.html`, { credentials: "same-origin" });
      templates[page] = answer.ok ? await answer.text() : null;
    }
    return templates[page];
  }

  let rendering = 0;
  async function render() {
    const mine = ++rendering;
    HR.route = parseRoute();
    const main = document.getElementById("main");
    if (HR.route.page !== "login" && !HR.me) {
      await HR.loadMe();
      if (!HR.me) {
        HR.go("/login?next=" + encodeURIComponent(location.pathname + location.search));
        return;
      }
    }
    if (HR.me) connectChanges();
    let page = HR.route.page;
    if (ADMIN_PAGES.has(page) && !HR.isAdmin()) page = "forbidden";
    const html = (await template(page)) ?? (await template("notfound"));
    if (mine !== rendering) return;
    main.innerHTML = html || "<p>page not found</p>";
    document.dispatchEvent(new CustomEvent("hr:route", { detail: HR.route }));
    const heading = main.querySelector("h1");
    document.title = (heading ? heading.textContent.trim() + " · " : "") + "HakuRiver";
    main.focus({ preventScroll: true });
  }

  HR.go = function (path, replace = false) {
    if (replace) history.replaceState(null, "", path);
    else history.pushState(null, "", path);
    render();
  };
  // The page's state in the URL: replaces the query (no new history entry, no render).
  HR.setQuery = function (params) {
    const q = query(params);
    const url = location.pathname + (q ? "?" + q : "");
    history.replaceState(null, "", url);
    HR.route = { ...HR.route, query: new URLSearchParams(q) };
  };

  window.addEventListener("popstate", render);
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[href]");
    if (!link || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    if (link.target || link.hasAttribute("download")) return;
    const href = link.getAttribute("href");
    if (!href.startsWith("/") || href.startsWith("/api/") || href.startsWith("/static/")) return;
    event.preventDefault();
    HR.go(href);
  });

  // -- formatting (the viewer's time zone) --------------------------------------------------

  function toDate(value) {
    if (value === null || value === undefined || value === "") return null;
    if (value instanceof Date) return value;
    if (typeof value === "number") return new Date(value > 1e14 ? value / 1000 : value);
    const d = new Date(value);
    return isNaN(d) ? null : d;
  }
  HR.fmt = {
    time(value) {
      const d = toDate(value);
      return d ? d.toLocaleString() : "—";
    },
    ago(value) {
      const d = toDate(value);
      if (!d) return "—";
      const s = Math.round((Date.now() - d.getTime()) / 1000);
      if (s < 5) return "just now";
      if (s < 60) return `${s}s ago`;
      if (s < 3600) return `${Math.floor(s / 60)}m ago`;
      if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
      return `${Math.floor(s / 86400)}d ago`;
    },
    duration(seconds) {
      if (seconds === null || seconds === undefined) return "—";
      const s = Math.round(seconds);
      if (s < 60) return `${s}s`;
      if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
      return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    },
    bytes(n) {
      if (n === null || n === undefined) return "—";
      const units = ["B", "KiB", "MiB", "GiB", "TiB"];
      let i = 0;
      let v = Number(n);
      while (v >= 1024 && i < units.length - 1) {
        v /= 1024;
        i++;
      }
      return `${v.toFixed(v >= 10 || i === 0 ? 0 : 1)} ${units[i]}`;
    },
    pct(x) {
      return x === null || x === undefined ? "—" : `${Math.round(x)}%`;
    },
  };

  // -- small services ---------------------------------------------------------------------

  // Confirmations in the page's own <dialog x-ref="confirm"> (keyboard and screen readers
  // know a real dialog): a component spreads ...HR.confirming() into its data, then
  // ask(text, label, action, withReason) and, from the dialog's buttons, answer(yes).
  HR.confirming = function () {
    let confirmed = null;
    return {
      confirmText: "",
      confirmLabel: "",
      confirmReason: false,
      reason: "",
      ask(text, label, action, withReason = false) {
        this.confirmText = text;
        this.confirmLabel = label;
        this.confirmReason = withReason;
        this.reason = "";
        confirmed = action;
        this.$refs.confirm.showModal();
      },
      answer(yes) {
        this.$refs.confirm.close();
        const action = confirmed;
        confirmed = null;
        if (yes && action) action(this.reason);
      },
    };
  };

  HR.toast = function (message, kind = "info") {
    const box = document.getElementById("toasts");
    if (!box) return;
    const item = document.createElement("div");
    item.className = `toast toast-${kind}`;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    item.textContent = message;
    box.appendChild(item);
    setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
  };

  // Copy text with the clipboard API; where there is none (a page served over plain HTTP
  // from another machine), select it in `element` so that Ctrl+C copies it. `echo`: say
  // the text in the toast (never for a secret). Whether it was copied.
  HR.copy = async function (text, element, echo = false) {
    const said = echo ? `: ${text}` : "";
    try {
      if (!navigator.clipboard || !window.isSecureContext) throw new Error("no clipboard");
      await navigator.clipboard.writeText(text);
      HR.toast("Copied" + said, "ok");
      return true;
    } catch (_) {
      if (element && typeof element.select === "function") {
        element.select();
      } else if (element) {
        const selection = window.getSelection();
        selection.removeAllRanges();
        const range = document.createRange();
        range.selectNodeContents(element);
        selection.addRange(range);
      }
      let copied = false;
      try {
        copied = document.execCommand("copy");
      } catch (_) {
        copied = false;
      }
      HR.toast(copied ? "Copied" + said : "Selected: press Ctrl+C to copy", copied ? "ok" : "info");
      return copied;
    }
  };

  // Download an API answer (e.g. a task's stdout) as a file, with the session cookie.
  HR.download = async function (path, filename) {
    const answer = await HR.api("GET", path, null, { response: true });
    const blob = await answer.blob();
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  };

  // Read a streaming answer (a log follow) as text chunks until it ends or `signal` aborts.
  HR.follow = async function (path, onText, signal) {
    const answer = await HR.api("GET", path, null, { response: true, signal });
    const reader = answer.body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        onText(decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      if (err.name !== "AbortError") throw err;
    }
  };

  // A terminal on a shell websocket (the task and environment shells: binary frames both
  // ways, JSON text frames for control: {"type":"resize",rows,cols}; {"type":"error",...}
  // and {"type":"exit",...} from the host). Returns {term, socket, dispose}.
  HR.terminal = function (element, wsPath, opts = {}) {
    const term = new window.Terminal({
      convertEol: false,
      cursorBlink: true,
      fontSize: 14,
      theme: matchMedia("(prefers-color-scheme: dark)").matches
        ? { background: "#111418" }
        : { background: "#1e1e1e" },
    });
    const fit = new window.FitAddon.FitAddon();
    term.loadAddon(fit);
    term.open(element);
    try {
      fit.fit();
    } catch (_) {
      /* hidden element */
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const sep = wsPath.includes("?") ? "&" : "?";
    const params = query({ rows: term.rows, cols: term.cols, csrf: HR.me && HR.me.csrf });
    const socket = new WebSocket(`${scheme}//${location.host}${wsPath}${sep}${params}`);
    socket.binaryType = "arraybuffer";
    const encoder = new TextEncoder();
    socket.onmessage = (message) => {
      if (typeof message.data === "string") {
        let control = null;
        try {
          control = JSON.parse(message.data);
        } catch (_) {
          term.write(message.data);
          return;
        }
        if (opts.onControl) opts.onControl(control);
        if (control && control.type === "error") term.write(`\r\n[${control.message}]\r\n`);
        if (control && control.type === "exit") term.write(`\r\n[exited ${control.code ?? ""}]\r\n`);
        return;
      }
      term.write(new Uint8Array(message.data));
    };
    socket.onclose = () => {
      term.write("\r\n[connection closed]\r\n");
      if (opts.onClose) opts.onClose();
    };
    const typed = term.onData((data) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(encoder.encode(data));
    });
    const resized = term.onResize(({ rows, cols }) => {
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "resize", rows, cols }));
      }
    });
    const onWindow = () => {
      try {
        fit.fit();
      } catch (_) {
        /* ignore */
      }
    };
    window.addEventListener("resize", onWindow);
    return {
      term,
      socket,
      dispose() {
        window.removeEventListener("resize", onWindow);
        typed.dispose();
        resized.dispose();
        try {
          socket.close();
        } catch (_) {
          /* closed */
        }
        term.dispose();
      },
    };
  };

  // -- the shell component (header, nav, login state) ---------------------------------------

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("shell", () => ({
      me: null,
      live: false,
      menuOpen: false,
      page: null,
      init() {
        document.addEventListener("hr:me", (e) => (this.me = e.detail));
        document.addEventListener("hr:live", (e) => (this.live = e.detail));
        document.addEventListener("hr:route", (e) => {
          this.menuOpen = false;
          this.page = e.detail.page;
        });
        this.me = HR.me;
        this.page = HR.route.page;
      },
      current(page) {
        return this.page === page || (DETAIL[page] && this.page === DETAIL[page]);
      },
      logout() {
        HR.logout();
      },
    }));

    window.Alpine.data("loginPage", () => ({
      token: "",
      error: "",
      busy: false,
      link: null, // a login link's {code, user, role}: asked about before it is used
      current: null, // who this browser is logged in as now, if anyone
      async init() {
        const code = new URLSearchParams(location.hash.slice(1)).get("code");
        if (!code) return;
        history.replaceState(null, "", location.pathname + location.search);
        this.current = HR.me ? HR.me.user : null;
        try {
          // Whose link is it? A link someone else made logs this browser in as them:
          // the page asks first, and says so when it would replace a session.
          const who = await HR.api("POST", "/api/ui/login", { code, peek: true }, { noRedirect: true });
          this.link = { code, user: who.user, role: who.role };
        } catch (err) {
          this.error = err.text || String(err);
        }
      },
      useLink() {
        return this.submit({ code: this.link.code });
      },
      async submit(body) {
        this.busy = true;
        this.error = "";
        try {
          await HR.login(body || { token: this.token.trim() });
          const next = HR.route.query.get("next");
          HR.go(next && next.startsWith("/") && !next.startsWith("//") ? next : "/");
        } catch (err) {
          this.error = err.text || String(err);
        } finally {
          this.busy = false;
        }
      },
    }));
  });

  window.HR = HR;
  document.addEventListener("DOMContentLoaded", () => {
    HR.loadMe().then((me) => {
      readyResolve(me);
      render();
    });
  });
})();
