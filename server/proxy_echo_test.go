package server_test

import (
	"encoding/base32"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// An API that echoes the injected credential in its response headers or
// trailers does not get it to the proxy's caller: those headers are
// removed and trailers dropped; the other headers and the body pass.
func TestProxyRemovesHeadersEchoingTheCredential(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	b.link(t, "sa")
	b.linkAPIKey(t, "keyed")
	const body = `{"results": []}`
	var rejected atomic.Value // a token the API rejected before, echoed too
	rejected.Store("")
	b.fake.SetAPIHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cred := r.Header.Get("Authorization")
		if cred == "" {
			cred = r.Header.Get("X-Api-Key")
		}
		bare := strings.TrimPrefix(cred, "Bearer ")
		h := w.Header()
		h.Set("X-Echo", cred)
		h.Set("X-Echo-Base64", base64.StdEncoding.EncodeToString([]byte(cred)))
		h.Set("X-Echo-Escaped", url.QueryEscape(bare))
		h.Set("X-Echo-Base32", base32.StdEncoding.EncodeToString([]byte(bare)))
		h.Add("X-Mixed", "harmless")
		h.Add("X-Mixed", "key="+bare)
		h.Set("Set-Cookie", "session="+base64.RawURLEncoding.EncodeToString([]byte(bare)))
		if old := rejected.Load().(string); old != "" {
			h.Set("X-Echo-Rejected", old)
		}
		h.Set("X-Innocent", "kept")
		h.Set("Trailer", "X-Echo-Trailer")
		h.Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(body))
		h.Set("X-Echo-Trailer", cred)
		h.Set(http.TrailerPrefix+"X-Echo-Undeclared", base64.StdEncoding.EncodeToString([]byte(bare)))
	}))

	for _, account := range []string{"sa", "keyed"} {
		resp, got := b.proxyCall(t, http.MethodGet, "/v1/accounts/"+account+"/proxy/v2/systems", b.keys.svc, nil, nil)
		cred := apiKey
		if account == "sa" {
			cred = b.fake.LastToken()
		}
		if resp.StatusCode != http.StatusOK || got != body {
			t.Fatalf("%s: HTTP %d %q, want 200 %q", account, resp.StatusCode, got, body)
		}
		if resp.Header.Get("X-Innocent") != "kept" || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: headers that echo nothing were removed: %v", account, resp.Header)
		}
		for _, h := range []string{"X-Echo", "X-Echo-Base64", "X-Echo-Escaped", "X-Echo-Base32", "X-Mixed", "Set-Cookie", "Trailer"} {
			if v, ok := resp.Header[h]; ok {
				t.Errorf("%s: the caller got header %s: %q", account, h, v)
			}
		}
		if len(resp.Trailer) != 0 {
			t.Errorf("%s: the caller got trailers %v", account, resp.Trailer)
		}
		assertNoSecretForm(t, account+": the proxy's answer", fmt.Sprintf("%v\n%v\n%s", resp.Header, resp.Trailer, got), "", cred)
	}

	// The API rejects the token, so the call is sent again with a new one;
	// the answer to that echoes the rejected token, which is removed too.
	old := b.fake.LastToken()
	rejected.Store(old)
	b.fake.RevokeTokens()
	resp, got := b.proxyCall(t, http.MethodGet, "/v1/accounts/sa/proxy/v2/systems", b.keys.svc, nil, nil)
	if resp.StatusCode != http.StatusOK || got != body || b.fake.LastToken() == old {
		t.Fatalf("after the API rejected the token: HTTP %d %q, new token %v", resp.StatusCode, got, b.fake.LastToken() != old)
	}
	if v, ok := resp.Header["X-Echo-Rejected"]; ok || resp.Header.Get("X-Innocent") != "kept" {
		t.Errorf("the caller got the rejected token's echo %q (or lost X-Innocent: %v)", v, resp.Header)
	}
}
