// Key files between gossipfl and js-libp2p, from the js side.
//   node keys.mjs read FILE    prints the peer ID js-libp2p derives from a key file
//   node keys.mjs write FILE   writes a fresh Ed25519 key file, prints its peer ID
import { readFileSync, writeFileSync } from "node:fs";
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from "@libp2p/crypto/keys";
import { peerIdFromPrivateKey } from "@libp2p/peer-id";

const [action, file] = process.argv.slice(2);
if (action === "read") {
  const key = privateKeyFromProtobuf(readFileSync(file));
  console.log(peerIdFromPrivateKey(key).toString());
} else if (action === "write") {
  const key = await generateKeyPair("Ed25519");
  writeFileSync(file, privateKeyToProtobuf(key), { mode: 0o600 });
  console.log(peerIdFromPrivateKey(key).toString());
} else {
  console.error("usage: node keys.mjs read|write FILE");
  process.exit(2);
}
