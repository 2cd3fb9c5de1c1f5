// The API reference page (static/pages/reference.html): GET /api/openapi.json, the
// document the host writes from its routes' declarations (control_plane/openapi.py),
// shown as a list of operations (method, path, access, parameters, body and answer)
// and the schemas they name. Every value is put in the page as text (x-text), never as
// HTML: the document's strings are the host's, but nothing here trusts them as markup.
(function () {
  "use strict";

  const REF = "#/components/schemas/";

  // A schema as a short type: "TaskOut", "string | null", "TaskOut[]", "map<string, int>".
  function typeOf(schema) {
    if (!schema || Object.keys(schema).length === 0) return "any";
    if (schema.$ref) return schema.$ref.startsWith(REF) ? schema.$ref.slice(REF.length) : schema.$ref;
    if (schema.anyOf) return schema.anyOf.map(typeOf).join(" | ");
    if (schema.oneOf) return schema.oneOf.map(typeOf).join(" | ");
    if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
    if (schema.const !== undefined) return JSON.stringify(schema.const);
    if (schema.type === "array") return typeOf(schema.items) + "[]";
    if (schema.type === "object" && schema.additionalProperties !== undefined && !schema.properties) {
      const value = schema.additionalProperties === true ? "any" : typeOf(schema.additionalProperties);
      return `map<string, ${value}>`;
    }
    if (Array.isArray(schema.type)) return schema.type.join(" | ");
    return schema.format ? `${schema.type} (${schema.format})` : schema.type || "any";
  }

  // The schema names a type string mentions (for the links to them).
  function refsOf(schema, out = new Set()) {
    if (!schema || typeof schema !== "object") return out;
    if (typeof schema.$ref === "string" && schema.$ref.startsWith(REF)) out.add(schema.$ref.slice(REF.length));
    for (const value of Object.values(schema)) {
      if (value && typeof value === "object") refsOf(value, out);
    }
    return out;
  }

  function operations(doc) {
    const out = [];
    for (const [path, methods] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(methods)) {
        const responses = Object.entries(op.responses || {})
          .filter(([status]) => status !== "default")
          .map(([status, r]) => {
            const content = Object.entries(r.content || {});
            return {
              status,
              description: r.description || "",
              contentType: content.length ? content[0][0] : "",
              type: content.length ? typeOf(content[0][1].schema) : "",
              refs: content.length ? [...refsOf(content[0][1].schema)] : [],
            };
          });
        const body = op.requestBody ? Object.entries(op.requestBody.content || {})[0] : null;
        out.push({
          key: `${method} ${path}`,
          id: op.operationId,
          method: op["x-websocket"] ? "ws" : method,
          path,
          summary: op.summary || "",
          description: op.description || "",
          access: op["x-access"] || "",
          tag: (op.tags || [""])[0],
          params: (op.parameters || []).map((p) => ({
            key: `${p.in}:${p.name}`,
            name: p.name,
            where: p.in,
            type: typeOf(p.schema),
            required: !!p.required,
            description: p.description || (p.schema && p.schema.description) || "",
          })),
          body: body ? { contentType: body[0], type: typeOf(body[1].schema), refs: [...refsOf(body[1].schema)] } : null,
          responses,
        });
      }
    }
    return out;
  }

  function schemas(doc) {
    const all = (doc.components && doc.components.schemas) || {};
    return Object.entries(all)
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([name, s]) => {
        const required = new Set(s.required || []);
        return {
          name,
          description: s.description || s.title || "",
          type: s.properties ? "object" : typeOf(s),
          fields: Object.entries(s.properties || {}).map(([field, f]) => ({
            name: field,
            type: typeOf(f),
            required: required.has(field),
            description: f.description || "",
          })),
        };
      });
  }

  document.addEventListener("alpine:init", () => {
    window.Alpine.data("referencePage", () => ({
      loaded: false,
      error: "",
      info: {},
      ops: [],
      types: [],
      filter: "",

      async init() {
        try {
          const doc = await HR.get("/api/openapi.json");
          this.info = doc.info || {};
          this.ops = operations(doc);
          this.types = schemas(doc);
        } catch (err) {
          this.error = err.message || String(err);
        }
        this.loaded = true;
      },

      get shown() {
        const q = this.filter.trim().toLowerCase();
        if (!q) return this.ops;
        return this.ops.filter((op) =>
          `${op.method} ${op.path} ${op.summary} ${op.access} ${op.tag}`.toLowerCase().includes(q),
        );
      },
    }));
  });
})();
