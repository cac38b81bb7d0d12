// Watches credential events and prints each one, resuming after a break.
//
//   CREDBROKER_CALLER_KEY=cbk_... node dist/examples/watch-events.js [COUNT]
//
// It prints "watching" once the watch is in place, then a line per event:
// its kind, the account or caller key it is about, who made the change,
// and the resume token to continue after it. A watcher that stores that
// token once it has dealt with the event, and starts from it
// (CREDBROKER_RESUME_TOKEN), misses no event across restarts. A watch that
// breaks (a replica stopped) is opened again, after the last event
// printed. With COUNT, it stops after that many events.
import { setTimeout as sleep } from "node:timers/promises";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { EventKind, EventService } from "../gen/credbroker/v1/event_pb.js";
import { refusal, transport } from "./connect.js";

// Trying again cannot cure a refused request or an expired resume token.
const giveUp = [Code.InvalidArgument, Code.PermissionDenied, Code.Unauthenticated, Code.FailedPrecondition, Code.Unimplemented, Code.NotFound];

const args = process.argv.slice(2);
if (args.length > 1 || (args.length === 1 && !/^\d+$/.test(args[0]))) {
  console.error("usage: watch-events.js [COUNT]");
  process.exit(2);
}
const count = args.length === 1 ? Number(args[0]) : Infinity;
const events = createClient(EventService, transport());
let resumeToken = process.env.CREDBROKER_RESUME_TOKEN ?? "";
let printed = 0;
let wait = 100;
let announced = false;
const done = new AbortController();
watching: for (;;) {
  try {
    const stream = events.watchEvents(
      { resumeToken },
      {
        signal: done.signal,
        // Headers come once the watch is in place.
        onHeader: () => {
          if (!announced) {
            console.log("watching");
            announced = true;
          }
        },
      },
    );
    for await (const resp of stream) {
      wait = 100;
      resumeToken = resp.resumeToken;
      const e = resp.event;
      if (!e) {
        continue; // no event for a while: only a newer token
      }
      console.log(`EVENT_KIND_${EventKind[e.kind]} ${e.account || e.callerKey} by ${e.principal} (resume token ${resumeToken})`);
      if (++printed >= count) {
        done.abort();
        break watching;
      }
    }
  } catch (err) {
    if (giveUp.includes(ConnectError.from(err).code)) {
      console.error(refusal(err));
      process.exitCode = 1;
      break;
    }
  }
  await sleep(wait / 2 + Math.random() * (wait / 2));
  wait = Math.min(wait * 2, 10_000);
}
