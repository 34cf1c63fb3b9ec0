/* Offline API reference: renders /openapi.json (no CDN, unlike Swagger UI). */
"use strict";

function h(tag, attrs = {}, children = []) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") n.textContent = v;
    else n.setAttribute(k, v);
  }
  for (const c of [].concat(children)) if (c) n.append(c);
  return n;
}

function resolve(spec, schema) {
  if (schema && schema.$ref) return spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeName(spec, s) {
  if (!s) return "";
  if (s.$ref) return s.$ref.split("/").pop();
  if (s.anyOf) return s.anyOf.map((x) => typeName(spec, x)).join(" | ");
  if (s.type === "array") return `${typeName(spec, s.items)}[]`;
  return s.type || "any";
}

function fieldsTable(spec, schema) {
  const s = resolve(spec, schema);
  if (!s.properties) return h("p", { class: "muted", text: typeName(spec, schema) || "—" });
  const t = h("table", { class: "list" }, [h("tr", {}, [h("th", { text: "field" }), h("th", { text: "type" }), h("th", { text: "default" }), h("th", { text: "notes" })])]);
  for (const [name, p] of Object.entries(s.properties)) {
    const def = "default" in p ? JSON.stringify(p.default) : (s.required || []).includes(name) ? "required" : "";
    t.append(h("tr", {}, [h("td", { class: "mono", text: name }), h("td", { class: "mono", text: typeName(spec, p) }), h("td", { class: "def", text: def }), h("td", { class: "muted", text: p.description || "" })]));
  }
  return t;
}

async function main() {
  const spec = await (await fetch("/openapi.json")).json();
  document.getElementById("api-intro").textContent = `${spec.info.title} ${spec.info.version} — ${spec.info.description}`;
  const groups = {};
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const tag = (op.tags || ["other"])[0];
      (groups[tag] = groups[tag] || []).push({ path, method: method.toUpperCase(), op });
    }
  }
  const root = document.getElementById("api-routes");
  for (const [tag, routes] of Object.entries(groups)) {
    root.append(h("h2", { text: tag }));
    for (const { path, method, op } of routes) {
      const body = h("div", { class: "body" });
      if (op.description) body.append(h("p", { text: op.description }));
      for (const prm of op.parameters || []) body.append(h("p", { class: "mono", text: `${prm.in} ${prm.name}: ${typeName(spec, prm.schema)}${prm.schema && "default" in prm.schema ? ` = ${JSON.stringify(prm.schema.default)}` : ""}` }));
      const req = op.requestBody && op.requestBody.content["application/json"];
      if (req) body.append(h("h3", { text: "Request body" }), fieldsTable(spec, req.schema));
      const ok = op.responses && (op.responses["200"] || op.responses["202"]);
      const res = ok && ok.content && ok.content["application/json"];
      if (res) body.append(h("h3", { text: "Response" }), fieldsTable(spec, res.schema));
      root.append(h("details", { class: "card route" }, [
        h("summary", {}, [h("span", { class: `method ${method}`, text: method }), h("span", { class: "path", text: path }), h("span", { class: "muted", text: op.summary || "" })]),
        body,
      ]));
    }
  }
}

main();
