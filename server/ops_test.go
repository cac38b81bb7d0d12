package server_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
)

// opsGet fetches a path of the ops listener, over TLS if the broker serves
// TLS, presenting no client certificate.
func (b *broker) opsGet(t *testing.T, path string) (int, string) {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: b.roots}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(b.opsURL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// metricValue is the value of the sample named exactly series (name and
// labels as Prometheus prints them), or -1 if there is none.
func metricValue(t *testing.T, scrape, series string) float64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(scrape)
	if m == nil {
		return -1
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestMetrics(t *testing.T) {
	b := startBroker(t)
	ctx := context.Background()
	req := jumpCloudRequest("acme")
	req.SecretExpireTime = timestamppb.New(time.Now().Add(10 * 24 * time.Hour))
	if _, err := b.accounts.CreateAccount(ctx, req); err != nil {
		t.Fatal(err)
	}
	b.grant(t, "acme", svcPrincipal)
	token := b.token(t, "acme").GetAccessToken() // cached when linked: a hit
	// The API stops taking that token: the proxy drops it and fetches
	// another (a miss, and a request upstream).
	b.fake.RevokeTokens()
	if resp, body := b.proxyCall(t, http.MethodGet, "/v1/accounts/acme/proxy/v2/systems", b.keys.svc, nil, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("proxied call: HTTP %d %s", resp.StatusCode, body)
	}
	_, err := b.tokens.GetToken(ctx, &credbrokerv1.GetTokenRequest{Name: "accounts/caller-chosen-name"})
	wantCode(t, err, codes.PermissionDenied, "")

	code, scrape := b.opsGet(t, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: HTTP %d", code)
	}
	for series, want := range map[string]func(float64) bool{
		`grpc_server_handled_total{grpc_code="OK",grpc_method="GetToken",grpc_service="credbroker.v1.TokenService",grpc_type="unary"}`:               func(v float64) bool { return v == 1 },
		`grpc_server_handled_total{grpc_code="PermissionDenied",grpc_method="GetToken",grpc_service="credbroker.v1.TokenService",grpc_type="unary"}`: func(v float64) bool { return v == 1 },
		`credbroker_token_requests_total{account="acme",outcome="OK"}`:                                                                               func(v float64) bool { return v == 1 },
		`credbroker_token_requests_total{account="",outcome="PERMISSION_DENIED"}`:                                                                    func(v float64) bool { return v == 1 },
		`credbroker_token_cache_lookups_total{result="hit"}`:                                                                                         func(v float64) bool { return v >= 1 },
		`credbroker_token_cache_lookups_total{result="miss"}`:                                                                                        func(v float64) bool { return v >= 1 },
		`credbroker_upstream_request_duration_seconds_count{provider="jumpcloud_service_account",result="ok"}`:                                       func(v float64) bool { return v == 2 },
		`credbroker_accounts{state="active"}`:                                                                                                        func(v float64) bool { return v == 1 },
		`credbroker_accounts{state="needs_attention"}`:                                                                                               func(v float64) bool { return v == 0 },
	} {
		if v := metricValue(t, scrape, series); !want(v) {
			t.Errorf("%s = %v", series, v)
		}
	}
	if strings.Contains(scrape, "caller-chosen-name") {
		t.Error("a name sent by a caller became a label")
	}
	assertAbsent(t, "metrics", []byte(scrape), clientSecret, token, b.keys.admin, b.keys.svc)

	// A rejected secret is counted as such.
	bad := jumpCloudRequest("bad")
	bad.GetJumpcloudServiceAccount().ClientSecret = "wrong"
	_, err = b.accounts.CreateAccount(ctx, bad)
	wantCode(t, err, codes.FailedPrecondition, "CREDENTIALS_REJECTED")
	_, scrape = b.opsGet(t, "/metrics")
	if v := metricValue(t, scrape, `credbroker_upstream_request_duration_seconds_count{provider="jumpcloud_service_account",result="rejected"}`); v != 1 {
		t.Errorf("rejected token requests = %v", v)
	}
}

func TestHealthAndReadiness(t *testing.T) {
	b, fail := startFailingAudit(t)
	if code, body := b.opsGet(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := b.opsGet(t, "/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	fail.Store(true)
	_, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/acme"})
	wantCode(t, err, codes.Unavailable, "AUDIT_UNAVAILABLE")
	code, body := b.opsGet(t, "/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "audit trail") {
		t.Fatalf("/readyz with the audit trail failing: %d %q", code, body)
	}
}

// The ops listener follows the rule of the other listeners: plaintext on
// loopback only; with a certificate it serves TLS, on loopback too, and
// asks no client certificate of Prometheus.
func TestOpsListenerTLS(t *testing.T) {
	t.Parallel()
	cfg, fake, logs := newConfig(t)
	cfg.OpsListenAddr = "0.0.0.0:0"
	if srv, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), "--ops-listen") || !strings.Contains(err.Error(), "requires TLS") {
		if err == nil {
			closeUnserved(t, srv)
		}
		t.Fatalf("plaintext ops listener on 0.0.0.0: %v", err)
	}

	withTLS(t, &cfg)
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatalf("TLS ops listener on 0.0.0.0: %v", err)
	}
	closeUnserved(t, srv)

	cfg.OpsListenAddr = "127.0.0.1:0"
	b := startWith(t, cfg, fake, logs)
	if !strings.HasPrefix(b.opsURL, "https://") {
		t.Fatalf("ops URL %s", b.opsURL)
	}
	if code, body := b.opsGet(t, "/healthz"); code != http.StatusOK || body != "ok\n" {
		t.Fatalf("/healthz over TLS: %d %q", code, body)
	}
	if code, scrape := b.opsGet(t, "/metrics"); code != http.StatusOK || !strings.Contains(scrape, "credbroker_accounts") {
		t.Fatalf("/metrics over TLS: %d, %d bytes", code, len(scrape))
	}
	// Plain HTTP gets no answer but the TLS server's refusal.
	resp, err := http.Get("http://" + strings.TrimPrefix(b.opsURL, "https://") + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), "ok") {
		t.Fatalf("plain HTTP to the ops listener: %d %q", resp.StatusCode, body)
	}
}

// Profiles are served with --pprof only, and never the command line.
func TestProfiles(t *testing.T) {
	t.Parallel()
	if code, _ := startBroker(t).opsGet(t, "/debug/pprof/"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/ without --pprof: %d", code)
	}
	cfg, fake, logs := newConfig(t)
	cfg.Profiling = true
	b := startWith(t, cfg, fake, logs)
	if code, body := b.opsGet(t, "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("/debug/pprof/ with --pprof: %d %.200q", code, body)
	}
	if code, body := b.opsGet(t, "/debug/pprof/heap?debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Fatalf("heap profile: %d %.200q", code, body)
	}
	if code, _ := b.opsGet(t, "/debug/pprof/cmdline"); code != http.StatusNotFound {
		t.Fatalf("/debug/pprof/cmdline: %d", code)
	}
}

// The secret label in /metrics is keyed: whoever can scrape it cannot check
// a guessed secret against it, as they could against the admin API's
// secret_id (a plain SHA-256 of the secret). It stays the same across a
// restart, so dashboards and alerts keep their series.
func TestMetricsSecretLabelIsKeyed(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	req := jumpCloudRequest("acme")
	req.SecretExpireTime = timestamppb.New(time.Now().Add(10 * 24 * time.Hour))
	if _, err := b.accounts.CreateAccount(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	series := regexp.MustCompile(`(?m)^credbroker_secret_expires_in_seconds\{account="acme",secret_hmac="([0-9a-f]{12})"\} (\S+)$`)
	sum := sha256.Sum256([]byte(clientSecret))
	label := func(b *broker) string {
		t.Helper()
		_, scrape := b.opsGet(t, "/metrics")
		m := series.FindAllStringSubmatch(scrape, -1)
		if len(m) != 1 {
			t.Fatalf("want one credbroker_secret_expires_in_seconds series for acme, got %d in:\n%s", len(m), scrape)
		}
		if v, err := strconv.ParseFloat(m[0][2], 64); err != nil || v <= 9*24*3600 || v > 10*24*3600 {
			t.Errorf("seconds until the secret expires: %s", m[0][2])
		}
		if id := strings.TrimPrefix(secretID(clientSecret), "sha256:"); strings.Contains(scrape, id) || strings.Contains(hex.EncodeToString(sum[:]), m[0][1]) {
			t.Fatalf("the scrape holds the secret's SHA-256: label %s, secret_id %s", m[0][1], secretID(clientSecret))
		}
		assertAbsent(t, "metrics", []byte(scrape), clientSecret)
		return m[0][1]
	}
	before := label(b)
	if after := label(b.restart(t)); after != before {
		t.Fatalf("the secret's label changed across a restart: %s, then %s", before, after)
	}
}
