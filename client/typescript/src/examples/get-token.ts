// Gets an account's access token from credbroker and prints when it expires.
//
//   CREDBROKER_CALLER_KEY=cbk_... node dist/examples/get-token.js accounts/acme
import { createClient } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { TokenService } from "../gen/credbroker/v1/token_pb.js";
import { refusal, transport } from "./connect.js";

const args = process.argv.slice(2);
if (args.length !== 1) {
  console.error("usage: get-token.js accounts/ACCOUNT_ID");
  process.exit(2);
}
const account = args[0];
const tokens = createClient(TokenService, transport());
try {
  const resp = await tokens.getToken({ name: account }, { timeoutMs: 10_000 });
  const expires = timestampDate(resp.expireTime!);
  const left = Math.round((expires.getTime() - Date.now()) / 1000);
  // Use resp.accessToken (with resp.headers) in API calls; never print or log it.
  console.log(`${account}: ${resp.tokenType} token for ${resp.apiBaseUrl} expires ${expires.toISOString().replace(/\.\d+Z$/, "Z")} (in ${left} s)`);
} catch (err) {
  console.error(refusal(err));
  process.exitCode = 1;
}
