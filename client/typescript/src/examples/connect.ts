// How the examples reach the broker: gRPC over HTTP/2 (Connect's gRPC
// protocol), with the caller key in the authorization header of every call.
import { readFileSync } from "node:fs";
import { createGrpcTransport } from "@connectrpc/connect-node";
import type { Interceptor, Transport } from "@connectrpc/connect";

// transport connects to CREDBROKER_ADDR (default 127.0.0.1:50051): in
// plaintext, which the broker allows on loopback only, or over TLS when
// CREDBROKER_TLS_CA names a CA bundle.
export function transport(): Transport {
  const key = process.env.CREDBROKER_CALLER_KEY;
  if (!key) {
    throw new Error("set CREDBROKER_CALLER_KEY to a caller key");
  }
  const callerKey: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  const addr = process.env.CREDBROKER_ADDR ?? "127.0.0.1:50051";
  const ca = process.env.CREDBROKER_TLS_CA;
  return createGrpcTransport({
    baseUrl: `${ca ? "https" : "http"}://${addr}`,
    nodeOptions: ca ? { ca: readFileSync(ca) } : undefined,
    interceptors: [callerKey],
  });
}
