// A gossipfl neighbour in js-libp2p, written from docs/protocol.md alone (section
// numbers below are that page's; the wire format itself is in wire.mjs).
//
//   node peer.mjs --key FILE [--listen MA] [--dial MA/p2p/ID] [--network ID]
//                 [--job auto|MANIFEST] [--layout auto|TEXT] [--value C] [--rounds R]
//                 [--timeout S] [--linger S] [--name NAME]
//
// It joins the job as a member (section 13: a signed record, re-signed every second),
// opens its own `/gossipfl/gossip/1.0.0` stream to each member it knows (section 12.1),
// says hello (5.1), and answers every round-r update it receives with its own round-r
// update: an fp32 vector (6) of n copies of C. It verifies what it receives (digest,
// shape, finite values: 5.2, 9) and prints one JSON line per event on stdout:
//   {"event": "listening" | "members" | "hello" | "update" | "sent" | "refusal" | "done" | "error", ...}
// `update` lines carry the sender, round, codec, n, digest_ok, shape_ok, finite, the sum
// and first values, and `pull`: max |x_r - (x_{r-1} + C) / 2| over the vector, which is
// 0 when the sender merged our round-(r-1) model with its own by a plain mean.
// It exits 0 once it has sent and received R rounds and the other side has gone (or
// after --linger seconds), 1 on --timeout.
//
// `--job auto` and `--layout auto` adopt the first job manifest / layout a peer states
// (in a membership message or a hello): the ways the spec names to learn them (13.1, 8).
// Given, they are stated from the start (5.1.1 and 8 say how `gossipfl start` derives
// both from its settings), and the hello goes out without waiting for the other's (5.1).
import "./polyfill.mjs";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { createLibp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { ping } from "@libp2p/ping";
import { privateKeyFromProtobuf } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey, peerIdFromString } from "@libp2p/peer-id";
import { multiaddr } from "@multiformats/multiaddr";
import * as wire from "./wire.mjs";

const { values: opt } = parseArgs({
  options: {
    key: { type: "string" },
    listen: { type: "string" },
    dial: { type: "string" },
    network: { type: "string", default: "gossipfl" },
    job: { type: "string", default: "auto" },
    layout: { type: "string", default: "auto" },
    value: { type: "string", default: "0.5" },
    rounds: { type: "string", default: "2" },
    timeout: { type: "string", default: "60" },
    linger: { type: "string", default: "5" },
    name: { type: "string", default: "js-peer" },
  },
});
const C = Number(opt.value);
const ROUNDS = Number(opt.rounds);
const INTERVAL = 1000; // exchange_interval and heartbeat_interval of the reference (12.1, 13)

const say = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }));
const note = (...args) => console.error(new Date().toISOString(), ...args);

const privateKey = privateKeyFromProtobuf(readFileSync(opt.key));
const me = peerIdFromPrivateKey(privateKey).toString();
const node = await createLibp2p({
  privateKey,
  addresses: { listen: opt.listen ? [opt.listen] : [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() },
});

// What the job is: learnt (auto) or given. `null` until known.
let job = opt.job === "auto" ? null : opt.job;
let layout = opt.layout === "auto" ? null : opt.layout;
let n = layout === null ? null : wire.floatingCount(layout);

const neighbours = new Map(); // peer ID -> { out, opening, lastSent, received: Map round -> vector }
const sent = new Set(); // rounds we sent (to every neighbour)
let lastRound = 0;
let finished = null;

function neighbour(peer) {
  if (!neighbours.has(peer)) {
    neighbours.set(peer, { out: null, opening: null, lastSent: 0, received: new Map(), gone: false });
  }
  return neighbours.get(peer);
}

async function send(stream, bytes) {
  if (!stream.send(wire.frame(bytes))) await stream.onDrain();
}

// ---- section 13: membership -------------------------------------------------------
const own = {
  peer: me,
  addrs: [], // filled once we listen
  incarnation: Date.now(), // 13.2: the wall clock at start, in ms
  heartbeat: 0,
  round: 0,
  left: false,
  age: 0,
  sig: null,
};
const view = new Map(); // peer ID -> record (others only), verified

async function resign() {
  own.sig = await privateKey.sign(wire.recordSignedBytes(opt.network, own));
}

const rank = (r) => [r.incarnation, r.heartbeat, r.left ? 1 : 0, r.round, ...r.addrs];
function outranks(a, b) {
  const x = rank(a);
  const y = rank(b);
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    if (x[i] === undefined) return false;
    if (y[i] === undefined) return true;
    if (x[i] !== y[i]) return x[i] > y[i];
  }
  return false;
}

// 13.4, simplified: keep the highest-ranked record each owner signed.
async function merge(message, from) {
  for (const rec of message.recs) {
    if (rec.peer === me) continue;
    const stored = view.get(rec.peer);
    if (stored && !outranks(rec, stored)) continue;
    const key = peerIdFromString(rec.peer).publicKey; // 13.3: the key is in the peer ID
    if (!key || !(await key.verify(wire.recordSignedBytes(opt.network, rec), rec.sig))) {
      note(`bad_record from ${from} for ${rec.peer}`);
      return;
    }
    const isNew = !stored;
    view.set(rec.peer, rec);
    if (isNew) say("member", { peer: rec.peer, addrs: rec.addrs, round: rec.round, via: from });
  }
}

// Adopts a job stated by a peer when ours is `auto` and still unknown.
function learnJob(theirs, where) {
  if (job === null) {
    job = theirs;
    say("job", { job, from: where });
  }
}

function ourMessage() {
  return wire.membersMessage(opt.network, [own, ...view.values()], job ?? "");
}

// 13.1, the responder: one frame in, merge, one frame out (our view), close.
async function onMembers(stream, connection) {
  const from = connection.remotePeer.toString();
  try {
    for await (const body of wire.frames(stream, wire.MAX_MEMBERS_MESSAGE)) {
      const message = wire.readMembersMessage(body);
      if (message.net !== opt.network) return stream.abort(new Error("another network"));
      learnJob(message.job, `members request of ${from}`);
      say("members", { from, as: "responder", job: message.job, records: message.recs.map((r) => r.peer) });
      if (message.job === job) await merge(message, from);
      // a manifest that differs: no merge, reply with ours and no records (13.1)
      const reply =
        message.job === job ? ourMessage() : wire.membersMessage(opt.network, [], job ?? "");
      await send(stream, reply);
      await stream.close();
      maybeOpenGossip();
      return;
    }
  } catch (err) {
    note(`members from ${from}: ${err.message}`);
    stream.abort(err);
  }
}

// 13.1, the requester.
async function exchange(target, label) {
  const stream = await node.dialProtocol(target, wire.MEMBERS, { signal: AbortSignal.timeout(2000) });
  await send(stream, ourMessage());
  for await (const body of wire.frames(stream, wire.MAX_MEMBERS_MESSAGE)) {
    const message = wire.readMembersMessage(body);
    say("members", { from: label, as: "requester", job: message.job, records: message.recs.map((r) => r.peer) });
    const jobWasUnknown = job === null;
    learnJob(message.job, `members reply of ${label}`);
    if (message.job === job) await merge(message, label);
    await stream.close();
    if (jobWasUnknown && job !== null) return exchange(target, label); // again, now of one job
    return;
  }
}

// Every interval: +1 heartbeat, re-sign (13.1), and swap views with every member we
// know (with two or three members, "one random live member" is all of them).
async function membershipTick(bootstrap) {
  own.heartbeat += 1;
  own.round = lastRound;
  await resign();
  const targets = new Map([...view.keys()].map((p) => [p, peerIdFromString(p)]));
  if (bootstrap && !targets.has(bootstrap.peer)) targets.set(bootstrap.peer, bootstrap.address);
  for (const [peer, target] of targets) {
    exchange(target, peer).catch((err) => note(`exchange with ${peer}: ${err.message}`));
  }
  maybeOpenGossip();
}

// ---- sections 5 and 12.1: gossip ----------------------------------------------------
// Reads a gossip stream: the other side's hello first (5.1), then its messages (5).
// Used for the streams the other side opens, and for our own (where the reference
// writes only a refusal, if anything).
async function readGossip(stream, from, inbound, direction) {
  let hello = null;
  let head = null; // a chunked update in progress (7)
  let parts = [];
  try {
    for await (const body of wire.frames(stream)) {
      const { header, payload } = wire.decodeMessage(body);
      if (header.kind === "refusal") {
        say("refusal", { from, code: header.code, text: header.text });
        continue;
      }
      if (!inbound) continue;
      if (hello === null) {
        if (header.kind !== "hello") return refuse(stream, wire.REFUSAL.UNEXPECTED, `${header.kind} before hello`);
        hello = header;
        const problem = checkHello(header, from, direction);
        if (problem) return refuse(stream, ...problem);
        continue;
      }
      if (header.kind === "heartbeat") continue; // liveness only (5.5)
      if (header.kind === "update-head") {
        head = header;
        parts = [];
        continue;
      }
      if (header.kind === "chunk") {
        if (head === null || header.seq !== parts.length) return refuse(stream, wire.REFUSAL.UNEXPECTED, "chunk out of sequence");
        parts.push(payload.slice());
        const size = parts.reduce((s, p) => s + p.length, 0);
        if (size >= 4 * head.n) {
          const whole = new Uint8Array(size);
          parts.reduce((at, p) => (whole.set(p, at), at + p.length), 0);
          onUpdate(head, whole, from);
          head = null;
        }
        continue;
      }
      if (header.kind === "update") onUpdate(header, payload, from);
    }
  } catch (err) {
    note(`gossip stream ${inbound ? "from" : "to"} ${from}: ${err.message}`);
  }
}

async function refuse(stream, code, why) {
  say("refused", { code, text: why });
  await send(stream, wire.refusal(code, why)).catch(() => {});
  await stream.close().catch(() => {});
}

// 5.1: version, network, job, layout, codecs, in this order.
function checkHello(h, from, direction) {
  if (h.version !== wire.PROTOCOL_VERSION) return [wire.REFUSAL.VERSION_MISMATCH, `version ${h.version}`];
  if (h.network_id !== opt.network) return [wire.REFUSAL.NETWORK_MISMATCH, `network ${h.network_id}`];
  learnJob(h.job ?? "", `hello of ${from}`);
  if ((h.job ?? "") !== job) return [wire.REFUSAL.JOB_MISMATCH, "another job"];
  const fingerprintOk = wire.hex(wire.fingerprint(h.layout)) === wire.hex(h.fingerprint);
  if (!fingerprintOk) return [wire.REFUSAL.MALFORMED, "fingerprint does not match the layout"];
  if (layout === null) {
    layout = h.layout;
    n = wire.floatingCount(layout);
  }
  if (h.layout !== layout) return [wire.REFUSAL.LAYOUT_MISMATCH, "another layout"];
  if (!h.codecs.includes("fp32")) return [wire.REFUSAL.NO_COMMON_CODEC, "we decode fp32 only"];
  say("hello", {
    from, connection: direction, name: h.name, network_id: h.network_id, codecs: h.codecs, job: h.job ?? "",
    layout: h.layout, n, fingerprint_ok: fingerprintOk,
  });
  maybeOpenGossip();
  return null;
}

function onUpdate(header, payload, from) {
  const got = wire.readUpdate(header, payload, n);
  const peer = neighbour(from);
  const previous = peer.received.get(header.round - 1);
  let pull = null;
  if (previous && got.vector.length === previous.length) {
    pull = 0;
    got.vector.forEach((x, i) => {
      pull = Math.max(pull, Math.abs(x - (previous[i] + C) / 2));
    });
  }
  peer.received.set(header.round, got.vector);
  const sum = got.vector.reduce((s, x) => s + x, 0);
  say("update", {
    from, sender: header.sender, sender_ok: header.sender === from, round: header.round,
    codec: header.codec, n: header.n, digest_ok: got.digestOk, shape_ok: got.shapeOk,
    finite: got.finite, sum, mean: sum / got.vector.length, first: Array.from(got.vector.slice(0, 3)),
    pull, problems: got.problems,
  });
  // one update per neighbour per round (12.1): answer round r with ours
  if (!sent.has(header.round)) sendRound(header.round);
}

// Opens our own gossip stream to every member (12.1: one per direction) once we know
// the job and the layout, and says hello on it.
function maybeOpenGossip() {
  if (job === null || layout === null) return;
  for (const peer of view.keys()) openGossip(peer);
}

function openGossip(peer) {
  const nb = neighbour(peer);
  if (nb.out || nb.opening || nb.gone) return;
  nb.opening = (async () => {
    const stream = await node.dialProtocol(peerIdFromString(peer), wire.GOSSIP);
    await send(stream, wire.hello({ networkId: opt.network, name: opt.name, codecs: ["fp32"], layout, job }));
    nb.out = stream;
    nb.lastSent = Date.now();
    say("opened", { to: peer });
    readGossip(stream, peer, false);
    for (const r of sent) await sendTo(nb, peer, r); // rounds sent before this stream
  })()
    .catch((err) => note(`gossip stream to ${peer}: ${err.message}`))
    .finally(() => {
      nb.opening = null;
    });
}

async function sendTo(nb, peer, round) {
  const vector = new Float32Array(n).fill(C);
  await send(nb.out, wire.updateFp32({ sender: me, round, vector }));
  nb.lastSent = Date.now();
  say("sent", { to: peer, round, n, value: C });
}

async function sendRound(round) {
  sent.add(round);
  lastRound = Math.max(lastRound, round);
  for (const [peer, nb] of neighbours) {
    if (nb.out) await sendTo(nb, peer, round).catch((err) => note(`send to ${peer}: ${err.message}`));
  }
  checkDone();
}

// 5.5, 12.1: a heartbeat every second on an otherwise idle stream.
function heartbeatTick() {
  for (const [peer, nb] of neighbours) {
    if (nb.out?.writeStatus === "writable" && Date.now() - nb.lastSent >= INTERVAL) {
      nb.lastSent = Date.now();
      send(nb.out, wire.heartbeat(lastRound)).catch((err) => note(`heartbeat to ${peer}: ${err.message}`));
    }
  }
}

function checkDone() {
  if (finished) return;
  const received = [...neighbours.values()].some((nb) => nb.received.size >= ROUNDS);
  if (sent.size >= ROUNDS && received) {
    finished = Date.now();
    say("done", { sent: [...sent].sort((a, b) => a - b), members: [...view.keys()] });
  }
}

// ---- main ---------------------------------------------------------------------------
await node.handle(wire.GOSSIP, (stream, connection) =>
  // `connection`: who dialed the connection this stream runs on (outbound: we did)
  readGossip(stream, connection.remotePeer.toString(), true, connection.direction),
);
await node.handle(wire.MEMBERS, onMembers);
node.addEventListener("peer:disconnect", (event) => {
  const peer = event.detail.toString();
  if (neighbours.has(peer)) {
    neighbours.get(peer).gone = true;
    say("disconnected", { peer });
  }
});
own.addrs = node.getMultiaddrs().map((a) => a.decapsulate("/p2p").toString());
await resign();
say("listening", { peer: me, addrs: node.getMultiaddrs().map(String) });

const bootstrap = opt.dial ? { address: multiaddr(opt.dial), peer: opt.dial.split("/p2p/").pop() } : null;
const started = Date.now();
const exitCode = await new Promise((resolve) => {
  const timer = setInterval(() => {
    membershipTick(bootstrap).catch((err) => note(`membership: ${err.message}`));
    heartbeatTick();
    const allGone = [...neighbours.values()].every((nb) => nb.gone);
    if (finished && (allGone || Date.now() - finished > Number(opt.linger) * 1000)) {
      clearInterval(timer);
      resolve(0);
    } else if (Date.now() - started > Number(opt.timeout) * 1000) {
      say("error", { error: `timeout: ${sent.size} rounds sent, ${ROUNDS} wanted` });
      clearInterval(timer);
      resolve(1);
    }
  }, INTERVAL);
  membershipTick(bootstrap).catch((err) => note(`membership: ${err.message}`));
});
await node.stop();
process.exit(exitCode);
