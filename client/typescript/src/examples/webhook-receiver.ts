// Receives credbroker's webhook deliveries, checks each one's signature,
// and prints each event once.
//
//   CREDBROKER_WEBHOOK_SECRET=whsec_... node dist/examples/webhook-receiver.js PORT [COUNT]
//
// It listens on 127.0.0.1:PORT (put a TLS-terminating proxy in front of it
// to take deliveries from another host: the broker sends them to https
// URLs only, but to loopback). It says "listening" when it is, answers 204
// to a delivery whose signature verifies and 401 to any other, and prints
// a line per event: its kind, what it is about, and its id. A delivery can
// come more than once (the broker delivers at least once): it prints an
// event the first time only. With COUNT, it stops after that many events.
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import type { IncomingHttpHeaders } from "node:http";

const tolerance = 300; // seconds a delivery's timestamp may be off: older ones are replays
const maxBody = 1 << 20;

// verify is the check every receiver makes: the signature over the
// timestamp and the body as received, compared in constant time, and a
// fresh timestamp.
export function verify(secret: string, headers: IncomingHttpHeaders, body: Uint8Array<ArrayBuffer>, now: number): boolean {
  const timestamp = String(headers["credbroker-timestamp"] ?? "");
  if (!/^\d+$/.test(timestamp)) {
    return false;
  }
  const encoder = new TextEncoder();
  const want = encoder.encode("v1=" + createHmac("sha256", secret).update(timestamp + ".").update(body).digest("hex"));
  const got = encoder.encode(String(headers["credbroker-signature"] ?? ""));
  return got.length === want.length && timingSafeEqual(got, want) && Math.abs(now - Number(timestamp)) <= tolerance;
}

const args = process.argv.slice(2);
if (args.length < 1 || args.length > 2 || !args.every((a) => /^\d+$/.test(a))) {
  console.error("usage: webhook-receiver.js PORT [COUNT]");
  process.exit(2);
}
const secret = process.env.CREDBROKER_WEBHOOK_SECRET ?? "";
if (!secret.startsWith("whsec_")) {
  console.error("set CREDBROKER_WEBHOOK_SECRET to the webhook's signing secret");
  process.exit(2);
}
const count = args.length === 2 ? Number(args[1]) : Infinity;
const seen = new Set<string>();
const server = createServer((req, res) => {
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  let size = 0;
  req.on("data", (c: Uint8Array) => {
    size += c.length;
    if (size <= maxBody) {
      chunks.push(new Uint8Array(c));
    }
  });
  req.on("end", () => {
    const body = new Uint8Array(size <= maxBody ? size : 0);
    let at = 0;
    for (const c of size <= maxBody ? chunks : []) {
      body.set(c, at);
      at += c.length;
    }
    if (req.method !== "POST" || size > maxBody || !verify(secret, req.headers, body, Date.now() / 1000)) {
      console.error("refused a delivery whose signature does not verify");
      res.writeHead(401).end();
      return;
    }
    const event = JSON.parse(new TextDecoder().decode(body));
    res.writeHead(204).end();
    if (seen.has(event.id)) {
      return; // delivered again: handled already
    }
    seen.add(event.id);
    console.log(`${event.kind} ${event.account ?? event.caller_key ?? ""} (event ${event.id})`);
    if (seen.size >= count) {
      server.close();
      server.closeAllConnections();
    }
  });
});
server.listen(Number(args[0]), "127.0.0.1", () => console.log("listening"));
