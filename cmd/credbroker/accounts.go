package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const secretFromStdin = `The secret is read from a prompt that does not echo it or, when standard
input is not a terminal, from standard input (printf %s "$SECRET" | ...);
never from the command line, where ps and shell history would keep it.`

func accountsLink(s *session, args []string) error {
	var (
		id, kind, clientID, region, orgID, tokenURL, scopes, apiBase, display, expires string
		validateOnly                                                                   bool
		labels                                                                         = labelsFlag{}
	)
	fs := s.flags("ID [flags]", `Links an account. The broker proves the credentials with the provider (a
token, or for an API key a call to its API) before it stores anything.

`+secretFromStdin)
	fs.StringVar(&kind, "kind", "jumpcloud", "jumpcloud (a service account: OAuth client credentials), jumpcloud-api-key (a legacy admin API key, usable through the egress proxy only) or oauth2 (any client-credentials token endpoint)")
	fs.StringVar(&clientID, "client-id", "", "the OAuth client ID (jumpcloud, oauth2)")
	fs.StringVar(&region, "region", "us", "JumpCloud region: us, eu or in (India)")
	fs.StringVar(&orgID, "org-id", "", "JumpCloud organization ID, for multi-tenant admins")
	fs.StringVar(&tokenURL, "token-url", "", "oauth2: the token endpoint")
	fs.StringVar(&scopes, "scopes", "", "oauth2: comma-separated scopes to request")
	fs.StringVar(&apiBase, "api-base-url", "", "oauth2: the API base URL returned with tokens and served by the egress proxy")
	fs.StringVar(&display, "display-name", "", "a name for people")
	fs.Var(labels, "label", "a key=value label; repeat it for more")
	fs.StringVar(&expires, "secret-expires", "", "when the secret expires (2027-03-01 or RFC 3339); the broker warns before and never sends it after")
	fs.BoolVar(&validateOnly, "validate-only", false, "only check the credentials with the provider; store nothing")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	req := &credbrokerv1.CreateAccountRequest{
		AccountId:    strings.TrimPrefix(id, "accounts/"),
		Account:      &credbrokerv1.Account{DisplayName: display, Labels: labels},
		ValidateOnly: validateOnly,
	}
	var err error
	if req.SecretExpireTime, err = parseTime("secret-expires", expires); err != nil {
		return err
	}
	reg, err := enumValue("region", "REGION_", region, credbrokerv1.Region_value)
	if err != nil {
		return err
	}
	need := func(flagName, value string) error {
		if value == "" {
			return &usageError{fmt.Sprintf("--%s is required with --kind %s", flagName, kind)}
		}
		return nil
	}
	switch kind {
	case "jumpcloud":
		if err := need("client-id", clientID); err != nil {
			return err
		}
		secret, err := readSecret(s.stderr, "client secret")
		if err != nil {
			return err
		}
		req.Credentials = &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: clientID, ClientSecret: secret, Region: credbrokerv1.Region(reg), OrgId: orgID,
		}}
		s.rejected = "the client ID, the client secret and the region (--region us, eu or in)"
	case "jumpcloud-api-key":
		secret, err := readSecret(s.stderr, "API key")
		if err != nil {
			return err
		}
		req.Credentials = &credbrokerv1.CreateAccountRequest_JumpcloudApiKey{JumpcloudApiKey: &credbrokerv1.JumpCloudAPIKeyCredentials{
			ApiKey: secret, Region: credbrokerv1.Region(reg), OrgId: orgID,
		}}
		s.rejected = "the API key, the region (--region us, eu or in) and, for a multi-tenant admin, --org-id"
	case "oauth2":
		if err := errors.Join(need("client-id", clientID), need("token-url", tokenURL)); err != nil {
			return err
		}
		secret, err := readSecret(s.stderr, "client secret")
		if err != nil {
			return err
		}
		creds := &credbrokerv1.OAuth2ClientCredentials{TokenUrl: tokenURL, ClientId: clientID, ClientSecret: secret, ApiBaseUrl: apiBase}
		if scopes != "" {
			creds.Scopes = strings.Split(scopes, ",")
		}
		req.Credentials = &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{Oauth2ClientCredentials: creds}
		s.rejected = "the client ID, the client secret and --token-url"
	default:
		return &usageError{fmt.Sprintf("--kind must be jumpcloud, jumpcloud-api-key or oauth2, not %q", kind)}
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).CreateAccount(ctx, req)
		if err != nil {
			return err
		}
		if validateOnly {
			fmt.Fprintln(s.stderr, "The provider accepted the credentials; nothing was stored (--validate-only).")
		}
		return s.print(resp, func(w io.Writer) { accountDetails(w, resp.GetAccount()) })
	})
}

func accountsList(s *session, args []string) error {
	var state, reason string
	fs := s.flags("[flags]", "Lists the linked accounts, with their state and when their credentials expire.")
	fs.StringVar(&state, "state", "", "only accounts in this state: active, degraded or needs-attention")
	fs.StringVar(&reason, "reason", "", "only accounts with this state reason, e.g. credentials-rejected or secret-expiring")
	if err := s.parse(fs, args); err != nil {
		return err
	}
	st, err := enumValue("state", "ACCOUNT_STATE_", state, credbrokerv1.AccountState_value)
	if err != nil {
		return err
	}
	why, err := enumValue("reason", "ACCOUNT_STATE_REASON_", reason, credbrokerv1.AccountStateReason_value)
	if err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		accounts, err := allPages(0, func(token string) ([]*credbrokerv1.Account, string, error) {
			resp, err := credbrokerv1.NewAccountServiceClient(conn).ListAccounts(ctx, &credbrokerv1.ListAccountsRequest{
				PageSize: 100, PageToken: token, State: credbrokerv1.AccountState(st), StateReason: credbrokerv1.AccountStateReason(why),
			})
			return resp.GetAccounts(), resp.GetNextPageToken(), err
		})
		if err != nil {
			return err
		}
		all := &credbrokerv1.ListAccountsResponse{Accounts: accounts}
		now := time.Now()
		return s.print(all, func(w io.Writer) {
			fmt.Fprintln(w, "NAME\tPROVIDER\tSTATE\tREASON\tCREDENTIALS EXPIRE\tGRANTS")
			for _, a := range all.GetAccounts() {
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%d\n", a.GetName(), enumText("PROVIDER_", a.GetProvider()), enumText("ACCOUNT_STATE_", a.GetState()),
					enumText("ACCOUNT_STATE_REASON_", a.GetStateReason()), when(a.GetCredentialsExpireTime(), now), len(a.GetGrants()))
			}
		})
	})
}

func accountsGet(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", "Shows an account: its state, grants and secrets (never the secrets themselves).")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: resourceName("accounts", id)})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { accountDetails(w, resp.GetAccount()) })
	})
}

func accountsUpdate(s *session, args []string) error {
	var (
		id, display string
		labels      = labelsFlag{}
	)
	fs := s.flags("ID [flags]", "Changes an account's display name or labels. Credentials change with add-secret and remove-secret.")
	fs.StringVar(&display, "display-name", "", "the new display name")
	fs.Var(labels, "label", "a key=value label; repeat it for more. The labels given replace all the account's labels")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	mask := &fieldmaskpb.FieldMask{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "display-name":
			mask.Paths = append(mask.Paths, "display_name")
		case "label":
			mask.Paths = append(mask.Paths, "labels")
		}
	})
	if len(mask.Paths) == 0 {
		return errors.New("nothing to change: give --display-name or --label")
	}
	req := &credbrokerv1.UpdateAccountRequest{
		Account:    &credbrokerv1.Account{Name: resourceName("accounts", id), DisplayName: display, Labels: labels},
		UpdateMask: mask,
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).UpdateAccount(ctx, req)
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { accountDetails(w, resp.GetAccount()) })
	})
}

func accountsDelete(s *session, args []string) error {
	var id string
	fs := s.flags("ID [flags]", "Deletes an account with its secrets, tokens and grants. The audit trail keeps its history.")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	name := resourceName("accounts", id)
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).DeleteAccount(ctx, &credbrokerv1.DeleteAccountRequest{Name: name})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { fmt.Fprintf(w, "deleted %s\n", name) })
	})
}

func accountsGrant(s *session, args []string) error {
	methods, prefixes := &listFlag{split: true}, &listFlag{}
	return changeGrant(s, args, `Lets PRINCIPAL (callerKeys/NAME, or a client certificate's principal: its URI
SAN as it is, e.g. spiffe://example.org/billing, dns:NAME for a DNS SAN, or
cn:TEXT for a subject CN) get the account's tokens and use it through the
egress proxy. With --method or --path-prefix, PRINCIPAL may only make those
calls through the egress proxy, and gets no tokens. Granting again replaces
the grant's limits.`,
		func(fs *flag.FlagSet) {
			fs.Var(methods, "method", "only this HTTP method through the egress proxy (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS; any case); repeat it, or give a comma-separated list, for more")
			fs.Var(prefixes, "path-prefix", `only paths below the API base URL starting with this one, segment by segment (e.g. /v2/systemgroups); repeat it for more`)
		},
		func(ctx context.Context, ac credbrokerv1.AccountServiceClient, name, principal string) (*credbrokerv1.Account, error) {
			req := &credbrokerv1.AddAccountGrantRequest{Name: name, Principal: principal, PathPrefixes: prefixes.values}
			for _, m := range methods.values {
				req.HttpMethods = append(req.HttpMethods, strings.ToUpper(strings.TrimSpace(m)))
			}
			resp, err := ac.AddAccountGrant(ctx, req)
			return resp.GetAccount(), err
		})
}

func accountsUngrant(s *session, args []string) error {
	return changeGrant(s, args, "Takes PRINCIPAL's grant on the account away; its next call is refused.", nil,
		func(ctx context.Context, ac credbrokerv1.AccountServiceClient, name, principal string) (*credbrokerv1.Account, error) {
			resp, err := ac.RemoveAccountGrant(ctx, &credbrokerv1.RemoveAccountGrantRequest{Name: name, Principal: principal})
			return resp.GetAccount(), err
		})
}

// changeGrant runs a grant command; addFlags, if set, adds its own flags.
func changeGrant(s *session, args []string, about string, addFlags func(*flag.FlagSet),
	change func(context.Context, credbrokerv1.AccountServiceClient, string, string) (*credbrokerv1.Account, error)) error {
	var id, principal string
	fs := s.flags("ID PRINCIPAL [flags]", about)
	if addFlags != nil {
		addFlags(fs)
	}
	if err := s.parse(fs, args, &id, &principal); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		account, err := change(ctx, credbrokerv1.NewAccountServiceClient(conn), resourceName("accounts", id), principal)
		if err != nil {
			return err
		}
		return s.print(account, func(w io.Writer) { accountDetails(w, account) })
	})
}

func accountsAddSecret(s *session, args []string) error {
	var id, expires string
	fs := s.flags("ID [flags]", `Adds a secret to an account (a new client secret or API key), for rotating
without downtime: the broker proves it first, then uses it. An account holds
at most two; remove the old one once the new one works.

`+secretFromStdin)
	fs.StringVar(&expires, "expires", "", "when the secret expires (2027-03-01 or RFC 3339)")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	req := &credbrokerv1.AddAccountSecretRequest{Name: resourceName("accounts", id)}
	var err error
	if req.ExpireTime, err = parseTime("expires", expires); err != nil {
		return err
	}
	if req.Secret, err = readSecret(s.stderr, "new secret"); err != nil {
		return err
	}
	s.rejected = "the new secret; it was not added"
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).AddAccountSecret(ctx, req)
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) {
			fmt.Fprintf(w, "added secret %s\n\n", resp.GetSecretId())
			accountDetails(w, resp.GetAccount())
		})
	})
}

func accountsRemoveSecret(s *session, args []string) error {
	var id, secretID string
	fs := s.flags("ID SECRET_ID [flags]", "Removes a secret (named by its sha256:... ID, as accounts get shows) from an account.")
	if err := s.parse(fs, args, &id, &secretID); err != nil {
		return err
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewAccountServiceClient(conn).RemoveAccountSecret(ctx,
			&credbrokerv1.RemoveAccountSecretRequest{Name: resourceName("accounts", id), SecretId: secretID})
		if err != nil {
			return err
		}
		return s.print(resp, func(w io.Writer) { accountDetails(w, resp.GetAccount()) })
	})
}

// accountDetails draws one account, a field a line.
func accountDetails(w io.Writer, a *credbrokerv1.Account) {
	now := time.Now()
	row := func(k, v string) { fmt.Fprintf(w, "%s\t%s\n", k, dash(v)) }
	row("NAME", a.GetName())
	row("DISPLAY NAME", a.GetDisplayName())
	row("PROVIDER", enumText("PROVIDER_", a.GetProvider()))
	row("CLIENT ID", a.GetClientId())
	row("REGION", enumText("REGION_", a.GetRegion()))
	row("ORG ID", a.GetOrgId())
	row("TOKEN URL", a.GetTokenUrl())
	row("API BASE URL", a.GetApiBaseUrl())
	row("STATE", enumText("ACCOUNT_STATE_", a.GetState()))
	row("REASON", enumText("ACCOUNT_STATE_REASON_", a.GetStateReason()))
	if e := a.GetLastError(); e != nil {
		row("LAST ERROR", e.GetMessage())
	}
	row("LAST TOKEN", when(a.GetLastTokenTime(), now))
	row("CREDENTIALS EXPIRE", when(a.GetCredentialsExpireTime(), now))
	row("LABELS", sortedPairs(a.GetLabels(), "="))
	row("CREATED", when(a.GetCreateTime(), now))
	for _, g := range a.GetGrants() {
		row("GRANT", g.GetPrincipal()+" (by "+g.GetCreator()+")"+grantLimits(g))
	}
	for _, sec := range a.GetSecrets() {
		v := sec.GetSecretId() + "  created " + when(sec.GetCreateTime(), now) + ", expires " + when(sec.GetExpireTime(), now)
		if r := sec.GetRejected(); r != nil {
			v += ", REJECTED: " + r.GetMessage()
		}
		row("SECRET", v)
	}
}

// grantLimits describes a grant's limits, e.g. ", proxy only: GET under
// /v2/systemgroups"; "" for a grant without limits.
func grantLimits(g *credbrokerv1.Grant) string {
	if len(g.GetHttpMethods()) == 0 && len(g.GetPathPrefixes()) == 0 {
		return ""
	}
	methods, paths := "any method", "any path"
	if len(g.GetHttpMethods()) > 0 {
		methods = strings.Join(g.GetHttpMethods(), ",")
	}
	if len(g.GetPathPrefixes()) > 0 {
		paths = strings.Join(g.GetPathPrefixes(), " ")
	}
	return ", proxy only: " + methods + " under " + paths
}

// parseTime reads a flag's date (2006-01-02, midnight UTC) or RFC 3339 time.
func parseTime(flagName, v string) (*timestamppb.Timestamp, error) {
	if v == "" {
		return nil, nil
	}
	for _, layout := range []string{time.RFC3339, time.DateOnly} {
		if t, err := time.Parse(layout, v); err == nil {
			return timestamppb.New(t), nil
		}
	}
	return nil, &usageError{fmt.Sprintf("--%s: %q is neither a date (2027-03-01) nor an RFC 3339 time (2027-03-01T12:00:00Z)", flagName, v)}
}

func accountsConnectLink(s *session, args []string) error {
	var id, kind, display, authURL, tokenURL, clientID, scopes, apiBase string
	var ttl time.Duration
	fs := s.flags("ID [flags]", `Makes a connect link: a link to the Hub that lets whoever holds the
credentials of account ID (a JumpCloud administrator, say) link it without
being a broker admin. They see only that account's form; the broker proves
the credentials before it keeps them. For an account whose users sign in
by redirect (--kind oauth2-code) you choose the provider and the app, and
they only sign in there; the app's client secret is read as below and
kept sealed with the link. The link works once, until it expires, and is
printed only now: hand it to its recipient only.

`+secretFromStdin)
	fs.StringVar(&kind, "kind", "jumpcloud", "jumpcloud (a service account), jumpcloud-api-key or oauth2-code (OAuth 2.0 sign-in by redirect)")
	fs.StringVar(&display, "display-name", "", "the account's display name")
	fs.DurationVar(&ttl, "ttl", 30*time.Minute, "how long the link works (1m to 168h)")
	fs.StringVar(&authURL, "authorization-url", "", "oauth2-code: the provider's sign-in (authorization) endpoint")
	fs.StringVar(&tokenURL, "token-url", "", "oauth2-code: the provider's token endpoint")
	fs.StringVar(&clientID, "client-id", "", "oauth2-code: the app's client ID")
	fs.StringVar(&scopes, "scopes", "", "oauth2-code: comma-separated scopes to request")
	fs.StringVar(&apiBase, "api-base-url", "", "oauth2-code: the API base URL returned with tokens and served by the egress proxy")
	if err := s.parse(fs, args, &id); err != nil {
		return err
	}
	req := &credbrokerv1.CreateConnectSessionRequest{AccountId: id, DisplayName: display, Ttl: durationpb.New(ttl)}
	switch kind {
	case "jumpcloud":
		req.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_SERVICE_ACCOUNT
	case "jumpcloud-api-key":
		req.Provider = credbrokerv1.Provider_PROVIDER_JUMPCLOUD_API_KEY
	case "oauth2-code":
		secret, err := readSecret(s.stderr, "client secret")
		if err != nil {
			return err
		}
		req.Provider = credbrokerv1.Provider_PROVIDER_OAUTH2_AUTHORIZATION_CODE
		req.Oauth2AuthorizationCode = &credbrokerv1.OAuth2AuthorizationCode{
			AuthorizationUrl: authURL, TokenUrl: tokenURL, ClientId: clientID, ClientSecret: secret, ApiBaseUrl: apiBase,
		}
		if scopes != "" {
			req.Oauth2AuthorizationCode.Scopes = strings.Split(scopes, ",")
		}
	default:
		return &usageError{fmt.Sprintf("--kind must be jumpcloud, jumpcloud-api-key or oauth2-code, not %q", kind)}
	}
	return s.call(func(ctx context.Context, conn grpc.ClientConnInterface) error {
		resp, err := credbrokerv1.NewConnectServiceClient(conn).CreateConnectSession(ctx, req)
		if err != nil {
			return err
		}
		fmt.Fprintln(s.stderr, "The link is shown only now and works once: hand it to whoever holds the account's credentials, and to no one else.")
		return s.print(resp, func(w io.Writer) {
			cs := resp.GetConnectSession()
			fmt.Fprintf(w, "NAME\t%s\nACCOUNT\taccounts/%s\nEXPIRES\t%s\nLINK\t%s\n", cs.GetName(), cs.GetAccountId(), when(cs.GetExpireTime(), time.Now()), resp.GetUrl())
		})
	})
}
