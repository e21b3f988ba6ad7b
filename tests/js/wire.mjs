// The gossipfl wire format, written from docs/protocol.md alone (section numbers below
// are that page's). Used by peer.mjs; `node wire.mjs VECTORS.json` checks it against
// docs/conformance/vectors.json byte for byte and prints one JSON line.
import { readFileSync } from "node:fs";
import { encode as msgpackEncode, decode as msgpackDecode } from "@msgpack/msgpack";
import { blake2b } from "@noble/hashes/blake2.js";
import { blake3 } from "@noble/hashes/blake3.js";

export const GOSSIP = "/gossipfl/gossip/1.0.0"; // section 1
export const MEMBERS = "/gossipfl/members/2.0.0"; // section 1, 13
export const WIRE_VERSION = 1; // `v` of every header (section 4)
export const PROTOCOL_VERSION = 2; // `version` of a hello (section 5.1); 2: BLAKE3 digests
export const MAX_FRAME = 16 * 1024 * 1024; // section 2, 12
export const MAX_MEMBERS_MESSAGE = 2 * 1024 * 1024; // section 12, 13.1
export const REFUSAL = {
  OTHER: 0, VERSION_MISMATCH: 1, NETWORK_MISMATCH: 2, LAYOUT_MISMATCH: 3, NO_COMMON_CODEC: 4,
  NOT_ALLOWED: 5, MALFORMED: 6, TOO_LARGE: 7, UNEXPECTED: 8, NOT_AVAILABLE: 9, BUSY: 10,
  SHUTTING_DOWN: 11, JOB_MISMATCH: 12,
}; // section 5.7

const text = new TextEncoder();
const blake256 = (bytes) => blake2b(bytes, { dkLen: 32 }); // BLAKE2b-256, no key (section 8)

export const hex = (bytes) => Buffer.from(bytes).toString("hex");
export const fromHex = (s) => new Uint8Array(Buffer.from(s, "hex"));

function concat(parts) {
  const out = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function u32be(n) {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n, false);
  return b;
}

// Section 2: a frame is a u32 big-endian length L (1 <= L <= max_frame), then L bytes.
export function frame(body) {
  if (body.length < 1 || body.length > MAX_FRAME) throw new Error(`frame of ${body.length} bytes`);
  return concat([u32be(body.length), body]);
}

// Section 2: reads frames off a byte stream. End of stream inside a frame is an error.
export async function* frames(source, maxFrame = MAX_FRAME) {
  let buf = new Uint8Array(0);
  for await (const chunk of source) {
    const piece = chunk instanceof Uint8Array ? chunk : chunk.subarray();
    buf = buf.length ? concat([buf, piece]) : piece;
    while (buf.length >= 4) {
      const length = new DataView(buf.buffer, buf.byteOffset, 4).getUint32(0, false);
      if (length === 0) throw new Error("MALFORMED: a frame of length 0");
      if (length > maxFrame) throw new Error(`TOO_LARGE: a frame of ${length} bytes`);
      if (buf.length < 4 + length) break;
      yield buf.slice(4, 4 + length);
      buf = buf.subarray(4 + length);
    }
  }
  if (buf.length) throw new Error(`TruncatedError: the stream ended inside a frame (${buf.length} bytes)`);
}

// Section 3: u32 H, one msgpack map of H bytes, zero padding to 8 bytes, the payload.
export function encodeMessage(header, payload = new Uint8Array(0)) {
  const h = msgpackEncode(header);
  const pad = (8 - ((4 + h.length) % 8)) % 8;
  return concat([u32be(h.length), h, new Uint8Array(pad), payload]);
}

export function decodeMessage(body) {
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  if (body.length < 4) throw new Error("MALFORMED: shorter than a header length");
  const h = view.getUint32(0, false);
  if (h > 1024 * 1024) throw new Error("TOO_LARGE: header");
  if (4 + h > body.length) throw new Error("TruncatedError: header");
  // one msgpack object filling all H bytes (3.1): decode() refuses trailing bytes
  const header = msgpackDecode(body.subarray(4, 4 + h), { useBigInt64: false });
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    throw new Error("MALFORMED: the header is not a map");
  }
  const pad = (8 - ((4 + h) % 8)) % 8;
  if (4 + h + pad > body.length) throw new Error("TruncatedError: padding");
  for (let i = 4 + h; i < 4 + h + pad; i++) {
    if (body[i] !== 0) throw new Error("MALFORMED: non-zero padding");
  }
  // section 4: `v` before `kind`
  if (header.v !== WIRE_VERSION) throw new Error(`VERSION_MISMATCH: v=${header.v}`);
  return { header, payload: body.subarray(4 + h + pad) };
}

// Section 9: the payload digest, BLAKE3 (hash mode, no key or context), 32 bytes.
export function payloadDigest(payload) {
  return blake3(payload, { dkLen: 32 });
}

// Section 8: layout text and fingerprint; n = the floating elements, in layout order.
const FLOATING = new Set(["float16", "bfloat16", "float32", "float64"]);
const LAYOUT_LINE = /^(\S{1,256}) (float16|bfloat16|float32|float64|int8|uint8|int16|uint16|int32|uint32|int64|uint64|bool) \[((?:0|[1-9][0-9]*)(?:,(?:0|[1-9][0-9]*)){0,7})?\]$/u;

export function layoutText(tensors) {
  return tensors.map(([name, dtype, shape]) => `${name} ${dtype} [${shape.join(",")}]\n`).join("");
}

export function parseLayout(layout) {
  if (layout !== "" && !layout.endsWith("\n")) throw new Error("MALFORMED: layout without final LF");
  const tensors = [];
  for (const line of layout.split("\n").slice(0, -1)) {
    const m = LAYOUT_LINE.exec(line);
    if (!m) throw new Error(`MALFORMED: layout line ${JSON.stringify(line)}`);
    tensors.push([m[1], m[2], m[3] === undefined ? [] : m[3].split(",").map(Number)]);
  }
  return tensors;
}

export function floatingCount(layout) {
  return parseLayout(layout)
    .filter(([, dtype]) => FLOATING.has(dtype))
    .reduce((sum, [, , shape]) => sum + shape.reduce((p, d) => p * d, 1), 0);
}

export const fingerprint = (layout) => blake256(text.encode(layout));

// Section 5.1.1: the job manifest, `key=value` lines sorted by key (code point order).
export function jobManifest(settings) {
  const keys = Object.keys(settings).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return keys.map((k) => `${k}=${settings[k]}`).join("\n");
}

// Section 5.1: hello. The key order is that of the conformance vector; receivers do
// not care, but then our bytes equal the vector's.
export function hello({ networkId, name, codecs, layout, job }) {
  const header = {
    v: WIRE_VERSION, kind: "hello", version: PROTOCOL_VERSION, network_id: networkId, name,
    codecs, layout, fingerprint: fingerprint(layout),
  };
  if (job) header.job = job; // an empty manifest omits the key (5.1.1)
  return encodeMessage(header);
}

// Section 5.5
export const heartbeat = (round) => encodeMessage({ v: WIRE_VERSION, kind: "heartbeat", round });

// Section 5.7
export const refusal = (code, why) =>
  encodeMessage({ v: WIRE_VERSION, kind: "refusal", code, text: why.slice(0, 1024) });

// Sections 5.2 and 6 (`fp32`): params {}, arrays [["float32", [n]]], payload = the
// little-endian float32 values.
export function updateFp32({ sender, round, vector, reply = false, meta = {} }) {
  const values = Float32Array.from(vector);
  const payload = new Uint8Array(values.length * 4);
  const view = new DataView(payload.buffer);
  values.forEach((x, i) => view.setFloat32(i * 4, x, true));
  return encodeMessage(
    {
      v: WIRE_VERSION, kind: "update", sender, round, codec: "fp32", n: values.length,
      params: {}, arrays: [["float32", [values.length]]], digest: payloadDigest(payload),
      reply, meta,
    },
    payload,
  );
}

// Section 5.2: checks an update (or a completed update-head + chunks, section 7) and
// decodes it. Only `fp32` is implemented: it is the only codec our hello offers.
export function readUpdate(header, payload, expectedN) {
  const problems = [];
  const { codec, n, arrays } = header;
  if (codec !== "fp32") problems.push(`codec ${codec} not offered`);
  if (n !== expectedN) problems.push(`n=${n}, our layout has ${expectedN}`);
  const shapeOk =
    Array.isArray(arrays) && arrays.length === 1 && arrays[0][0] === "float32" &&
    arrays[0][1].length === 1 && arrays[0][1][0] === n;
  if (!shapeOk) problems.push(`arrays ${JSON.stringify(arrays)}`);
  if (payload.length !== 4 * n) problems.push(`payload of ${payload.length} bytes for n=${n}`);
  const digestOk = hex(payloadDigest(payload)) === hex(header.digest ?? []);
  if (!digestOk) problems.push("digest mismatch");
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const vector = new Float32Array(Math.floor(payload.length / 4));
  for (let i = 0; i < vector.length; i++) vector[i] = view.getFloat32(i * 4, true);
  const finite = vector.every(Number.isFinite);
  if (!finite) problems.push("non-finite values");
  return { vector, digestOk, shapeOk, finite, problems };
}

// Section 13.3: the bytes a member signs.
export function recordSignedBytes(networkId, { peer, addrs, incarnation, heartbeat: hb, round, left }) {
  const str = (s) => {
    const b = text.encode(s);
    const len = new Uint8Array(2);
    new DataView(len.buffer).setUint16(0, b.length, false);
    return concat([len, b]);
  };
  const count = new Uint8Array(2);
  new DataView(count.buffer).setUint16(0, addrs.length, false);
  const ints = new Uint8Array(24);
  const view = new DataView(ints.buffer);
  [incarnation, hb, round].forEach((x, i) => view.setBigUint64(8 * i, BigInt(x), false));
  return concat([
    text.encode("gossipfl/member-record/v2\0"), str(networkId), str(peer), count,
    ...addrs.map(str), ints, new Uint8Array([left ? 1 : 0]),
  ]);
}

// Section 13.2: the membership message. A record travels as an array of 8 fields.
export function membersMessage(networkId, records, job) {
  const message = {
    v: 2, net: networkId,
    recs: records.map((r) => [r.peer, r.addrs, r.incarnation, r.heartbeat, r.round, r.left, r.age, r.sig]),
  };
  if (job) message.job = job;
  return msgpackEncode(message);
}

export function readMembersMessage(body) {
  const m = msgpackDecode(body);
  if (m?.v !== 2 || typeof m.net !== "string" || !Array.isArray(m.recs)) {
    throw new Error("bad_membership_message");
  }
  const recs = m.recs.map(([peer, addrs, incarnation, hb, round, left, age, sig]) => ({
    peer, addrs, incarnation, heartbeat: hb, round, left, age, sig,
  }));
  return { net: m.net, job: m.job ?? "", recs };
}

// `node wire.mjs docs/conformance/vectors.json`: our encoder against the vectors.
if (import.meta.url === `file://${process.argv[1]}`) {
  const vectors = JSON.parse(readFileSync(process.argv[2], "utf8"));
  const results = {};
  for (const vec of vectors.valid) {
    const f = vec.fields;
    let ours = null;
    if (vec.name === "hello") {
      ours = hello({
        networkId: f.network_id, name: f.name, codecs: f.codecs,
        layout: layoutText(f.layout), job: jobManifest(f.job),
      });
      results.layout_text = layoutText(f.layout) === f.layout_text;
      results.fingerprint = hex(fingerprint(f.layout_text)) === f.fingerprint;
    } else if (vec.name === "heartbeat") {
      ours = heartbeat(f.round);
    } else if (vec.name === "update-fp32") {
      ours = updateFp32({ sender: f.sender, round: f.round, vector: f.vector, reply: f.reply, meta: f.meta });
      const { header, payload } = decodeMessage(fromHex(vec.frames[0]).subarray(4));
      results["update-fp32 read"] = readUpdate(header, payload, f.vector.length).problems.length === 0;
    } else if (vec.kind === "refusal") {
      ours = refusal(f.code, f.text);
    }
    if (ours) results[vec.name] = hex(frame(ours)) === vec.frames[0];
  }
  const two = new Uint8Array(new Float32Array([1.0, -2.0]).buffer);
  results.digest_example =
    hex(payloadDigest(two)) === "54847fa2028a3457068a78ba8e6a086cccf672def025d7e4cb2761b538edbf3f";
  results.protocol_version = vectors.protocol_version === PROTOCOL_VERSION;
  results.digest_vectors = vectors.payload_digest.vectors.every(({ length, digest }) => {
    const payload = new Uint8Array(length);
    for (let i = 0; i < length; i++) payload[i] = i % 251;
    return hex(payloadDigest(payload)) === digest;
  });
  const mem = vectors.members;
  results.members_signed_bytes = mem.records.every(
    (r, i) => hex(recordSignedBytes(mem.network_id, r)) === mem.signed_bytes[i],
  );
  results.members_message =
    hex(membersMessage(mem.network_id, mem.records.map((r) => ({ ...r, sig: fromHex(r.signature) })), jobManifest(mem.job))) ===
    mem.message;
  console.log(JSON.stringify(results));
}
