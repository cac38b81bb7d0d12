"""Gets an account's access token from credbroker and prints when it expires.

    CREDBROKER_CALLER_KEY=cbk_... PYTHONPATH=client/python \
        python3 client/python/examples/get_token.py accounts/acme

It needs client/python on PYTHONPATH (the generated code). It connects
to CREDBROKER_ADDR (default 127.0.0.1:50051) in plaintext, which the broker
allows on loopback only; set CREDBROKER_TLS_CA to a CA bundle for TLS.
For a cluster, CREDBROKER_ADDR lists the replicas' IP:PORT (IPv6 as
[IP]:PORT), comma-separated, or names one DNS name whose records are the
replicas, as dns:///NAME:PORT.
"""

import ipaddress
import json
import os
import sys
from datetime import datetime, timezone

import grpc

from credbroker.v1 import token_pb2, token_pb2_grpc

# Calls go round robin over the replicas, and a GetToken that one answers
# UNAVAILABLE (stopped, or cut off from its storage) is tried again on the
# next: the Go client's client.ServiceConfig.
SERVICE_CONFIG = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "credbroker.v1.TokenService", "method": "GetToken"}],
        "retryPolicy": {
            "maxAttempts": 5,
            "initialBackoff": "0.1s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
})


def target() -> str:
    addrs = [a.strip() for a in os.environ.get("CREDBROKER_ADDR", "127.0.0.1:50051").split(",") if a.strip()]
    if len(addrs) == 1:
        return addrs[0]
    # gRPC lists several addresses only as IP literals, all of one family.
    try:
        ips = [ipaddress.ip_address(a.rsplit(":", 1)[0].strip("[]")) for a in addrs]
    except ValueError:
        sys.exit("CREDBROKER_ADDR: list the replicas as IP:PORT (or give one dns:///NAME:PORT whose records are the replicas)")
    if len({ip.version for ip in ips}) > 1:
        sys.exit("CREDBROKER_ADDR: list IPv4 or IPv6 addresses, not both")
    return ("ipv4:" if ips[0].version == 4 else "ipv6:") + ",".join(addrs)


def channel() -> grpc.Channel:
    options = [("grpc.service_config", SERVICE_CONFIG)]
    ca = os.environ.get("CREDBROKER_TLS_CA")
    if ca:
        with open(ca, "rb") as f:
            return grpc.secure_channel(target(), grpc.ssl_channel_credentials(root_certificates=f.read()), options)
    return grpc.insecure_channel(target(), options)


def caller_key_metadata() -> list:
    """The caller key, for the authorization header of every call."""
    key = os.environ.get("CREDBROKER_CALLER_KEY")
    if not key:
        print("set CREDBROKER_CALLER_KEY to a caller key", file=sys.stderr)
        sys.exit(2)
    return [("authorization", "Bearer " + key)]


def main() -> int:
    if len(sys.argv) != 2:
        print("usage: get_token.py accounts/ACCOUNT_ID", file=sys.stderr)
        return 2
    account = sys.argv[1]
    auth = caller_key_metadata()
    with channel() as ch:
        tokens = token_pb2_grpc.TokenServiceStub(ch)
        try:
            resp = tokens.GetToken(token_pb2.GetTokenRequest(name=account), metadata=auth, timeout=10)
        except grpc.RpcError as err:
            print(f"credbroker refused: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    expires = resp.expire_time.ToDatetime(tzinfo=timezone.utc)
    left = int((expires - datetime.now(timezone.utc)).total_seconds())
    # Use resp.access_token (with resp.headers) in API calls; never print or log it.
    print(f"{account}: {resp.token_type} token for {resp.api_base_url} expires {expires.strftime('%Y-%m-%dT%H:%M:%SZ')} (in {left} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
