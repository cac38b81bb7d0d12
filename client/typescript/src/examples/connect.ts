// How the examples reach the broker: gRPC over HTTP/2 (Connect's gRPC
// protocol), with the caller key in the authorization header of every call.
import { readFileSync } from "node:fs";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Interceptor, Transport } from "@connectrpc/connect";

// transport connects to CREDBROKER_ADDR (default 127.0.0.1:50051): in
// plaintext, which the broker allows on loopback only, or over TLS when
// CREDBROKER_TLS_CA names a CA bundle. For a cluster, CREDBROKER_ADDR lists
// the replicas' HOST:PORT, comma-separated.
export function transport(): Transport {
  const key = process.env.CREDBROKER_CALLER_KEY;
  if (!key) {
    console.error("set CREDBROKER_CALLER_KEY to a caller key");
    process.exit(2);
  }
  const callerKey: Interceptor = (next) => (req) => {
    req.header.set("authorization", `Bearer ${key}`);
    return next(req);
  };
  const addrs = (process.env.CREDBROKER_ADDR ?? "127.0.0.1:50051").split(",").map((a) => a.trim());
  const ca = process.env.CREDBROKER_TLS_CA;
  const transports = addrs.map((addr) =>
    createGrpcTransport({
      baseUrl: `${ca ? "https" : "http"}://${addr}`,
      nodeOptions: ca ? { ca: readFileSync(ca) } : undefined,
      interceptors: [callerKey],
    }),
  );
  return transports.length === 1 ? transports[0] : replicas(transports);
}

// replicas sends calls round robin over the replicas' transports, and
// tries a GetToken that one answers Unavailable (stopped, or cut off from
// its storage) again on the next, as the Go client's service config does.
function replicas(transports: Transport[]): Transport {
  let next = 0;
  const pick = () => transports[next++ % transports.length];
  return {
    async unary(method, signal, timeoutMs, header, input, contextValues) {
      const retries = method.parent.typeName === "credbroker.v1.TokenService" ? transports.length - 1 : 0;
      for (let attempt = 0; ; attempt++) {
        try {
          return await pick().unary(method, signal, timeoutMs, header, input, contextValues);
        } catch (err) {
          if (attempt >= retries || ConnectError.from(err).code !== Code.Unavailable) {
            throw err;
          }
        }
      }
    },
    stream(method, signal, timeoutMs, header, input, contextValues) {
      return pick().stream(method, signal, timeoutMs, header, input, contextValues);
    },
  };
}

// refusal is how the examples print a failed call, as the Python ones do:
// the gRPC code's canonical name (FAILED_PRECONDITION, as the gRPC spec,
// Python and the audit trail spell it) and the broker's message.
export function refusal(err: unknown): string {
  const e = ConnectError.from(err);
  const code = Code[e.code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
  return `credbroker refused: ${code}: ${e.rawMessage}`;
}
