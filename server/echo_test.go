package server_test

import (
	"bytes"
	"context"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unicode"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/internal/provider"
)

// The echo test's client: both change under query and path escaping.
const (
	echoClientID = "echo client"
	echoSecret   = "canary/ECHO+secret 7c2d&x=1"
)

// secretForms are the encodings of secret (sent with id) that must never
// come out of the broker.
func secretForms(id, secret string) []string {
	forms := []string{secret, url.QueryEscape(secret), url.PathEscape(secret), hex.EncodeToString([]byte(secret)), base32.StdEncoding.EncodeToString([]byte(secret))}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		for _, s := range []string{secret, id + ":" + secret, url.QueryEscape(id) + ":" + url.QueryEscape(secret)} {
			forms = append(forms, enc.EncodeToString([]byte(s)))
		}
	}
	return forms
}

var jsonUnicodeEscape = regexp.MustCompile(`\\u[0-9a-fA-F]{4}`)

// readable is text as a reader sees it: JSON \u escapes decoded, then
// non-printable characters (which a terminal or browser does not show)
// removed.
func readable(text string) string {
	text = jsonUnicodeEscape.ReplaceAllStringFunc(text, func(e string) string {
		r, _ := strconv.ParseUint(e[2:], 16, 32)
		return string(rune(r))
	})
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, text)
}

// assertNoSecretForm fails if text holds any form of the secret, as sent
// or as a reader sees it.
func assertNoSecretForm(t *testing.T, what, text, id, secret string) {
	t.Helper()
	if text == "" {
		t.Fatalf("%s is empty: the scan would prove nothing", what)
	}
	for _, form := range secretForms(id, secret) {
		if strings.Contains(text, form) || strings.Contains(readable(text), form) {
			t.Fatalf("%s contains the secret as %q", what, form)
		}
		if f := folded(form); strings.Contains(folded(text), f) {
			t.Fatalf("%s contains the secret as %q, spaced out or with its case changed", what, form)
		}
	}
}

// folded is text lower-cased, with everything but letters and digits removed.
func folded(text string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsLetter(r) || unicode.IsDigit(r) {
			return unicode.ToLower(r)
		}
		return -1
	}, text)
}

// statusText is everything a client gets of an error: code, message and details.
func statusText(err error) string {
	return protojson.Format(status.Convert(err).Proto())
}

func providerErrorInfo(t *testing.T, err error) map[string]string {
	t.Helper()
	for _, d := range status.Convert(err).Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info.GetMetadata()
		}
	}
	t.Fatalf("no ErrorInfo in %v", err)
	return nil
}

// A token endpoint that echoes the request back in its error answer, in
// every form, gets none of it to anyone: admins see the description
// withheld, callers only the OAuth2 error code, and the audit trail and
// server log hold no form of the secret.
func TestProviderEchoesReachNoOne(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := context.Background()

	// echo says what the endpoint rejects requests with; nil: it issues tokens.
	type echo struct {
		name        string
		code        func(id, sec string, r *http.Request, body string) string
		description func(id, sec string, r *http.Request, body string) string
		bodyStyle   bool
	}
	invalidClient := func(string, string, *http.Request, string) string { return "invalid_client" }
	interleave := func(s, sep string) string { return strings.Join(strings.Split(s, ""), sep) }
	echoes := []echo{
		{name: "authorization header", code: invalidClient, description: func(_, _ string, r *http.Request, _ string) string {
			return "got Authorization: " + r.Header.Get("Authorization")
		}},
		{name: "decoded basic credentials", code: invalidClient, description: func(id, sec string, _ *http.Request, _ string) string {
			return "client " + id + " with secret " + sec + " is unknown"
		}},
		{name: "form body", bodyStyle: true, code: invalidClient, description: func(_, _ string, _ *http.Request, body string) string {
			return "got body " + body
		}},
		{name: "control characters", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + interleave(sec, "\x01")
		}},
		{name: "zero-width spaces", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + interleave(sec, "\u200b")
		}},
		{name: "query escaped", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + url.QueryEscape(sec)
		}},
		{name: "path escaped", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "see /clients/" + url.PathEscape(sec)
		}},
		{name: "base64 of the secret", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + base64.RawURLEncoding.EncodeToString([]byte(sec))
		}},
		{name: "a fragment", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret starting " + sec[:14]
		}},
		{name: "the error code", code: func(_, sec string, _ *http.Request, _ string) string { return "bad_" + sec }, description: func(string, string, *http.Request, string) string {
			return "Client authentication failed."
		}},
		{name: "the error code, spaced out", code: func(_, sec string, _ *http.Request, _ string) string { return interleave(sec, " ") }, description: func(string, string, *http.Request, string) string {
			return "Client authentication failed."
		}},
		{name: "spaces slipped in", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + interleave(sec, " ")
		}},
		{name: "upper-cased", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + strings.ToUpper(sec)
		}},
		{name: "base32", code: invalidClient, description: func(_, sec string, _ *http.Request, _ string) string {
			return "bad secret " + base32.StdEncoding.EncodeToString([]byte(sec))
		}},
	}
	var current atomic.Pointer[echo]
	endpoint := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		e := current.Load()
		if e == nil {
			_ = json.NewEncoder(w).Encode(map[string]any{"access_token": "echo-token", "token_type": "bearer", "expires_in": 3600})
			return
		}
		raw, _ := io.ReadAll(r.Body)
		form, _ := url.ParseQuery(string(raw))
		id, sec := form.Get("client_id"), form.Get("client_secret")
		if rawID, rawSecret, ok := r.BasicAuth(); ok {
			id, _ = url.QueryUnescape(rawID)
			sec, _ = url.QueryUnescape(rawSecret)
		}
		w.WriteHeader(http.StatusUnauthorized)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": e.code(id, sec, r, string(raw)), "error_description": e.description(id, sec, r, string(raw))})
	}))
	defer endpoint.Close()
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusUnauthorized) }))
	defer api.Close()
	request := func(id string, e echo) *credbrokerv1.CreateAccountRequest {
		style := credbrokerv1.AuthStyle_AUTH_STYLE_HEADER
		if e.bodyStyle {
			style = credbrokerv1.AuthStyle_AUTH_STYLE_BODY
		}
		return &credbrokerv1.CreateAccountRequest{AccountId: id, Credentials: &credbrokerv1.CreateAccountRequest_Oauth2ClientCredentials{
			Oauth2ClientCredentials: &credbrokerv1.OAuth2ClientCredentials{
				TokenUrl: endpoint.URL, ClientId: echoClientID, ClientSecret: echoSecret, AuthStyle: style, ApiBaseUrl: api.URL,
			},
		}}
	}

	var adminSees, callerSees bytes.Buffer
	for i, e := range echoes {
		id := fmt.Sprintf("echo-%d", i)
		current.Store(nil)
		if _, err := b.accounts.CreateAccount(ctx, request(id, e)); err != nil {
			t.Fatalf("%s: CreateAccount while the endpoint issues tokens: %v", e.name, err)
		}
		b.grant(t, id, svcPrincipal)
		current.Store(&e)

		// Admin: linking fails, with the provider's description withheld.
		_, err := b.accounts.CreateAccount(ctx, request(id+"-new", e))
		wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
		adminSees.WriteString(statusText(err))
		echoesInCode := strings.HasPrefix(e.name, "the error code")
		if got := providerErrorInfo(t, err)["provider_error_description"]; got != provider.Withheld && !echoesInCode {
			t.Errorf("%s: the admin sees the description %q, want it withheld", e.name, got)
		}

		// Caller, through the egress proxy: the API rejects the token and
		// the new token request is rejected.
		resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/"+id+"/proxy/things", b.keys.svc, nil, nil)
		wantProxyError(t, resp, body, http.StatusBadRequest, "FAILED_PRECONDITION")
		fmt.Fprintf(&callerSees, "%v\n%s\n", resp.Header, body)

		// Caller, through GetToken: the OAuth2 error code, nothing else.
		_, err = b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
		wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
		callerSees.WriteString(statusText(err))
		meta := providerErrorInfo(t, err)
		if !echoesInCode && meta["provider_error"] != "invalid_client" {
			t.Errorf("%s: the caller gets provider_error %q, want invalid_client", e.name, meta["provider_error"])
		}
		if _, ok := meta["provider_error_description"]; ok {
			t.Errorf("%s: the caller gets the provider's description %q", e.name, meta["provider_error_description"])
		}

		a, err := b.accounts.GetAccount(ctx, &credbrokerv1.GetAccountRequest{Name: "accounts/" + id})
		if err != nil {
			t.Fatal(err)
		}
		if a.GetAccount().GetLastError() == nil || len(a.GetAccount().GetSecrets()) != 1 || a.GetAccount().GetSecrets()[0].GetRejected() == nil {
			t.Fatalf("%s: GetAccount shows no rejection: %v", e.name, a)
		}
		adminSees.WriteString(protojson.Format(a))
	}
	// A description that echoes nothing secret reaches admins, not callers.
	if !strings.Contains(adminSees.String(), "Client authentication failed.") {
		t.Error("admins never see an innocent description")
	}
	if strings.Contains(callerSees.String(), "Client authentication failed.") {
		t.Error("a caller sees the provider's description")
	}
	events, err := b.audit.ListAuditEvents(ctx, &credbrokerv1.ListAuditEventsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(protojson.Format(events), "account_state") {
		t.Fatal("no account_state event in the audit trail")
	}

	assertNoSecretForm(t, "what admins see", adminSees.String(), echoClientID, echoSecret)
	assertNoSecretForm(t, "what callers see", callerSees.String(), echoClientID, echoSecret)
	assertNoSecretForm(t, "the audit trail", protojson.Format(events), echoClientID, echoSecret)
	assertNoSecretForm(t, "the server log", b.logs.String(), echoClientID, echoSecret)
}
