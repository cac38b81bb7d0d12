// Links a JumpCloud service account, as an admin, and prints its state.
//
//   printf %s "$CLIENT_SECRET" | CREDBROKER_CALLER_KEY=cbk_...admin... \
//     node dist/examples/link-account.js acme CLIENT_ID
//
// The client secret is read from standard input, never from the command
// line. The broker proves the credentials with JumpCloud before it stores them.
import { createClient } from "@connectrpc/connect";
import { AccountService, AccountStateSchema, Region } from "../gen/credbroker/v1/account_pb.js";
import { refusal, transport } from "./connect.js";

const args = process.argv.slice(2);
if (args.length !== 2) {
  console.error("usage: link-account.js ACCOUNT_ID CLIENT_ID (the client secret on standard input)");
  process.exit(2);
}
const [accountId, clientId] = args;
let secret = "";
for await (const chunk of process.stdin) {
  secret += chunk;
}
const accounts = createClient(AccountService, transport());
try {
  const resp = await accounts.createAccount(
    {
      accountId,
      credentials: {
        case: "jumpcloudServiceAccount",
        value: { clientId, clientSecret: secret.replace(/\r?\n$/, ""), region: Region.US },
      },
    },
    { timeoutMs: 30_000 },
  );
  console.log(`linked ${resp.account?.name} (client ${resp.account?.clientId}): ${stateName(resp.account?.state ?? 0)}`);
} catch (err) {
  console.error(refusal(err));
  process.exitCode = 1;
}

// stateName is the state's name in the proto (ACCOUNT_STATE_ACTIVE), as
// Python, grpcurl and the JSON of the API spell it.
function stateName(state: number): string {
  return AccountStateSchema.values.find((v) => v.number === state)?.name ?? String(state);
}
