"""Watches credential events and prints each one, resuming after a break.

    CREDBROKER_CALLER_KEY=cbk_... PYTHONPATH=client/python \
        python3 client/python/examples/watch_events.py [COUNT]

It prints "watching" once the watch is in place, then a line per event:
its kind, the account or caller key it is about, who made the change, and
the resume token to continue after it. A watcher that stores that token
once it has dealt with the event, and starts from it
(CREDBROKER_RESUME_TOKEN), misses no event across restarts. A watch that
breaks (a replica stopped) is opened again, after the last event printed.
With COUNT, it stops after that many events.
"""

import os
import random
import sys
import time

import grpc

from credbroker.v1 import event_pb2, event_pb2_grpc
from get_token import caller_key_metadata, channel

# Trying again cannot cure a refused request or an expired resume token.
GIVE_UP = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND,
}


def main() -> int:
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and not sys.argv[1].isdigit()):
        print("usage: watch_events.py [COUNT]", file=sys.stderr)
        return 2
    count = int(sys.argv[1]) if len(sys.argv) == 2 else None
    auth = caller_key_metadata()
    token = os.environ.get("CREDBROKER_RESUME_TOKEN", "")
    printed, wait, announced = 0, 0.1, False
    with channel() as ch:
        events = event_pb2_grpc.EventServiceStub(ch)
        while True:
            call = events.WatchEvents(event_pb2.WatchEventsRequest(resume_token=token), metadata=auth)
            try:
                call.initial_metadata()  # headers come once the watch is in place
                if not announced and not call.done():
                    print("watching", flush=True)
                    announced = True
                for resp in call:
                    wait = 0.1
                    token = resp.resume_token
                    if not resp.HasField("event"):
                        continue  # no event for a while: only a newer token
                    e = resp.event
                    kind = event_pb2.EventKind.Name(e.kind)
                    print(f"{kind} {e.account or e.caller_key} by {e.principal} (resume token {token})", flush=True)
                    printed += 1
                    if count is not None and printed >= count:
                        call.cancel()
                        return 0
            except grpc.RpcError as err:
                if err.code() in GIVE_UP:
                    print(f"credbroker refused: {err.code().name}: {err.details()}", file=sys.stderr)
                    return 1
            time.sleep(wait / 2 + random.uniform(0, wait / 2))
            wait = min(wait * 2, 10)


if __name__ == "__main__":
    sys.exit(main())
