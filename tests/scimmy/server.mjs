// A SCIM 2.0 server built on SCIMMY (npm), the way its documentation shows: in-memory handlers,
// SCIMMY's own Filter for searches. Uniqueness is the handlers' job in SCIMMY; like most products
// built on it, userName and Group displayName are unique without case and a duplicate is answered
// 409 {"scimType": "uniqueness"}. Listens on 127.0.0.1 (a free port), prints "listening <port>",
// accepts `Authorization: Bearer $SCIMMY_TOKEN`.
import http from "node:http";
import crypto from "node:crypto";
import SCIMMY from "scimmy";

const TOKEN = process.env.SCIMMY_TOKEN ?? "";
const store = {User: new Map(), Group: new Map()};
const unique = {User: "userName", Group: "displayName"};

SCIMMY.Config.set({patch: true, filter: {supported: true, maxResults: 200}, bulk: false, etag: false, sort: false});

for (const [type, Resource] of [["User", SCIMMY.Resources.User], ["Group", SCIMMY.Resources.Group]]) {
    SCIMMY.Resources.declare(Resource
        .ingress((resource, instance) => {
            const data = JSON.parse(JSON.stringify(instance));
            const key = String(data[unique[type]] ?? "").toLowerCase();
            for (const other of store[type].values())
                if (other.id !== resource.id && String(other[unique[type]] ?? "").toLowerCase() === key)
                    throw new SCIMMY.Types.Error(409, "uniqueness", `${type} ${unique[type]} '${data[unique[type]]}' already exists`);
            const now = new Date().toISOString();
            const before = resource.id ? store[type].get(resource.id) : undefined;
            if (resource.id && !before) throw new SCIMMY.Types.Error(404, null, `Resource ${resource.id} not found`);
            const id = resource.id ?? crypto.randomUUID();
            const saved = {...data, id, meta: {resourceType: type, created: before?.meta.created ?? now, lastModified: now}};
            store[type].set(id, saved);
            return saved;
        })
        .egress((resource) => {
            const all = [...store[type].values()];
            return resource.filter ? resource.filter.match(all) : all;
        })
        .degress((resource) => {
            if (!store[type].delete(resource.id)) throw new SCIMMY.Types.Error(404, null, `Resource ${resource.id} not found`);
        }));
}

function send(res, status, body) {
    const data = body === undefined ? "" : JSON.stringify(body);
    res.writeHead(status, {"Content-Type": "application/scim+json", "Content-Length": Buffer.byteLength(data)});
    res.end(data);
}

async function handle(req, body) {
    const url = new URL(req.url, "http://127.0.0.1");
    const [, root, name, id] = url.pathname.split("/");
    if (root !== "v2") throw new SCIMMY.Types.Error(404, null, `no ${url.pathname}`);
    const params = Object.fromEntries(url.searchParams);
    for (const n of ["startIndex", "count"]) if (n in params) params[n] = Number(params[n]);
    if (name === "ServiceProviderConfig") return [200, await new SCIMMY.Resources.ServiceProviderConfig(params).read()];
    if (name === "ResourceTypes") return [200, await new SCIMMY.Resources.ResourceType(...(id ? [id] : []), params).read()];
    if (name === "Schemas") return [200, await new SCIMMY.Resources.Schema(...(id ? [id] : []), params).read()];
    const Resource = {Users: SCIMMY.Resources.User, Groups: SCIMMY.Resources.Group}[name];
    if (!Resource) throw new SCIMMY.Types.Error(404, null, `no ${url.pathname}`);
    const resource = id ? new Resource(id, params) : new Resource(params);
    switch (req.method) {
        case "GET": return [200, await resource.read()];
        case "POST": return [201, await resource.write(body)];
        case "PUT": return [200, await resource.write(body)];
        case "PATCH": { const out = await resource.patch(body); return out ? [200, out] : [204, undefined]; }
        case "DELETE": await resource.dispose(); return [204, undefined];
        default: throw new SCIMMY.Types.Error(405, null, `${req.method} not allowed`);
    }
}

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
        if (req.headers.authorization !== `Bearer ${TOKEN}`)
            return send(res, 401, {schemas: ["urn:ietf:params:scim:api:messages:2.0:Error"], status: "401", detail: "unauthorized"});
        try {
            const text = Buffer.concat(chunks).toString();
            const [status, out] = await handle(req, text ? JSON.parse(text) : undefined);
            send(res, status, out);
        } catch (ex) {
            const error = new SCIMMY.Messages.Error(ex instanceof SCIMMY.Types.Error ? ex : new SCIMMY.Types.Error(500, null, String(ex)));
            send(res, Number(error.status), error);
        }
    });
});
server.listen(0, "127.0.0.1", () => console.log(`listening ${server.address().port}`));
