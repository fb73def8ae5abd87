// The console's API client: every call is one of blocksnap's AWS-compatible APIs on this origin,
// signed in the browser (sigv4.js). The keys live in sessionStorage: gone when the tab closes.
import { sign } from "./sigv4.js";

const KEY = "blocksnap-console";

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}
export function saveSession(s) {
  sessionStorage.setItem(KEY, JSON.stringify(s));
}
export function signOut() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(code, message, status) {
    super(`${code}: ${message}`);
    this.code = code;
    this.status = status;
  }
}

async function send(service, region, headers, body, creds) {
  const s = creds || session();
  if (!s) throw new ApiError("NotSignedIn", "Sign in first.", 0);
  const signed = await sign({
    accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey,
    region: region || s.region, service, headers, body,
  });
  return fetch("/", { method: "POST", headers: signed, body, credentials: "omit", cache: "no-store" });
}

// An EC2 Query element as plain data: an element whose children are all <item> is a list, one with
// children an object, a leaf its text.
function toData(el) {
  const kids = Array.from(el.children);
  if (kids.length === 0) return el.textContent;
  if (kids.every((k) => k.localName === "item")) return kids.map(toData);
  const o = {};
  for (const k of kids) o[k.localName] = toData(k);
  return o;
}

/// A list member of an EC2 answer ("" or missing when empty).
export function list(x) {
  return Array.isArray(x) ? x : [];
}

/// EC2 Query: `params` is the flattened form (e.g. {"Filter.1.Name": "volume-id"}).
export async function ec2(action, params = {}, { region, creds } = {}) {
  const form = new URLSearchParams({ Action: action, Version: "2016-11-15" });
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") form.append(k, String(v));
  const body = form.toString();
  const r = await send("ec2", region, { "content-type": "application/x-www-form-urlencoded; charset=utf-8" }, body, creds);
  const text = await r.text();
  const doc = new DOMParser().parseFromString(text, "application/xml");
  if (!r.ok) {
    const code = doc.getElementsByTagName("Code")[0]?.textContent || `HTTP ${r.status}`;
    const msg = doc.getElementsByTagName("Message")[0]?.textContent || text.slice(0, 200);
    throw new ApiError(code, msg, r.status);
  }
  return toData(doc.documentElement);
}

/// A JSON 1.1 call (`X-Amz-Target: <target>`), signed for `service`.
export async function json(service, target, payload = {}, { region, creds } = {}) {
  const body = JSON.stringify(payload);
  const r = await send(service, region, { "content-type": "application/x-amz-json-1.1", "x-amz-target": target }, body, creds);
  const text = await r.text();
  let doc = {};
  try {
    doc = text ? JSON.parse(text) : {};
  } catch {
    doc = { message: text.slice(0, 200) };
  }
  if (!r.ok) {
    const code = String(doc.__type || doc.code || `HTTP ${r.status}`).split("#").pop();
    throw new ApiError(code, doc.message || doc.Message || "", r.status);
  }
  return doc;
}

export const lightsail = (op, payload, opts) => json("lightsail", `Lightsail_20161128.${op}`, payload, opts);
export const store = (op, payload, opts) => json("blocksnap", `BlocksnapStore_20261130.${op}`, payload, opts);
export const nbd = (op, payload, opts) => json("blocksnap", `BlocksnapNbd_20261129.${op}`, payload, opts);

/// Bytes for people: 1.5 GiB.
export function bytes(n) {
  n = Number(n) || 0;
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}
