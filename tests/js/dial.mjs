// A js-libp2p node that dials a gossipfl peer: identify, then ping.
//   node dial.mjs KEYFILE MULTIADDR [--wait-refusal]
// prints one JSON line: {"peer", "protocols", "agent", "ping_ms"} or {"error": "..."},
// and "refusal": {"code", "text"} when the peer told us why it refuses us (a `refusal`
// on a gossip stream it opens, docs/protocol.md 5.7); --wait-refusal waits up to 5 s
// for one.
import "./polyfill.mjs";
import { readFileSync } from "node:fs";
import { createLibp2p } from "libp2p";
import { tcp } from "@libp2p/tcp";
import { noise } from "@chainsafe/libp2p-noise";
import { yamux } from "@chainsafe/libp2p-yamux";
import { identify } from "@libp2p/identify";
import { ping } from "@libp2p/ping";
import { privateKeyFromProtobuf } from "@libp2p/crypto/keys";
import { multiaddr } from "@multiformats/multiaddr";
import * as wire from "./wire.mjs";

const [keyFile, address, waitFlag] = process.argv.slice(2);
const node = await createLibp2p({
  privateKey: privateKeyFromProtobuf(readFileSync(keyFile)),
  addresses: { listen: [] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), ping: ping() },
});
const out = {};
let toldWhy;
const told = new Promise((resolve) => {
  toldWhy = resolve;
});
// A peer that refuses us may say why on a gossip stream of its own: read its refusal.
await node.handle(wire.GOSSIP, async (stream) => {
  try {
    for await (const body of wire.frames(stream)) {
      const { header } = wire.decodeMessage(body);
      if (header.kind === "refusal") {
        out.refusal = { code: header.code, text: header.text };
        toldWhy();
        break;
      }
    }
  } catch {
    // the connection went away: nothing more to read
  }
});
// identify runs by itself on every new connection: wait for its result
const identified = new Promise((resolve) => {
  node.addEventListener("peer:identify", (event) => resolve(event.detail), { once: true });
});
try {
  const target = multiaddr(address);
  const connection = await node.dial(target, { signal: AbortSignal.timeout(10000) });
  out.peer = connection.remotePeer.toString();
  const info = await Promise.race([
    identified,
    new Promise((_, reject) => setTimeout(() => reject(new Error("no identify in 10 s")), 10000)),
  ]);
  out.protocols = info.protocols;
  out.agent = info.agentVersion;
  out.ping_ms = await node.services.ping.ping(target, { signal: AbortSignal.timeout(10000) });
} catch (err) {
  out.error = `${err.name}: ${err.message}`;
}
if (waitFlag === "--wait-refusal" && out.refusal === undefined) {
  await Promise.race([told, new Promise((resolve) => setTimeout(resolve, 5000))]);
}
console.log(JSON.stringify(out));
await node.stop();
process.exit(0);
