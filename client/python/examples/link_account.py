"""Links a JumpCloud service account, as an admin, and prints its state.

    printf %s "$CLIENT_SECRET" | CREDBROKER_CALLER_KEY=cbk_...admin... \
        PYTHONPATH=client/python python3 client/python/examples/link_account.py acme CLIENT_ID

The client secret is read from standard input, never from the command line.
The broker proves the credentials with JumpCloud before it stores them.
"""

import sys

import grpc

from credbroker.v1 import account_pb2, account_pb2_grpc
from get_token import caller_key_metadata, channel


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: link_account.py ACCOUNT_ID CLIENT_ID (the client secret on standard input)", file=sys.stderr)
        return 2
    account_id, client_id = sys.argv[1], sys.argv[2]
    auth = caller_key_metadata()
    secret = sys.stdin.readline().rstrip("\r\n")
    req = account_pb2.CreateAccountRequest(
        account_id=account_id,
        jumpcloud_service_account=account_pb2.JumpCloudServiceAccountCredentials(
            client_id=client_id, client_secret=secret, region=account_pb2.REGION_US
        ),
    )
    with channel() as ch:
        try:
            resp = account_pb2_grpc.AccountServiceStub(ch).CreateAccount(req, metadata=auth, timeout=30)
        except grpc.RpcError as err:
            print(f"credbroker refused: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    state = account_pb2.AccountState.Name(resp.account.state)
    print(f"linked {resp.account.name} (client {resp.account.client_id}): {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
