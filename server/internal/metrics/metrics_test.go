package metrics_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// scrape serves the registry as the broker's /metrics does and reads it
// once: each sample's value by its name and labels, as exposed.
func scrape(t *testing.T, m *metrics.Metrics) map[string]float64 {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: HTTP %d, %v\n%s", resp.StatusCode, err, body)
	}
	samples := map[string]float64{}
	for line := range strings.SplitSeq(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		samples[line[:i]] = v
	}
	return samples
}

// accountsSource stands in for the broker's accounts, read at each scrape.
type accountsSource struct {
	mu       sync.Mutex
	accounts []metrics.Account
}

func (s *accountsSource) set(a ...metrics.Account) {
	s.mu.Lock()
	s.accounts = a
	s.mu.Unlock()
}

func (s *accountsSource) get() []metrics.Account {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accounts
}

func TestCallMetrics(t *testing.T) {
	t.Parallel()
	m := metrics.New(func() []metrics.Account { return nil })
	m.TokenRequest("acme", "OK")
	m.TokenRequest("acme", "OK")
	m.TokenRequest("", "PermissionDenied")
	for range 3 {
		m.CacheLookup(true)
	}
	m.CacheLookup(false)
	m.UpstreamRequest("jumpcloud", "ok", 30*time.Millisecond)
	m.UpstreamRequest("jumpcloud", "ok", 3*time.Second)
	m.UpstreamRequest("jumpcloud", "rejected", time.Millisecond)

	got := scrape(t, m)
	for sample, want := range map[string]float64{
		`credbroker_token_requests_total{account="acme",outcome="OK"}`:                                          2,
		`credbroker_token_requests_total{account="",outcome="PermissionDenied"}`:                                1,
		`credbroker_token_cache_lookups_total{result="hit"}`:                                                    3,
		`credbroker_token_cache_lookups_total{result="miss"}`:                                                   1,
		`credbroker_upstream_request_duration_seconds_count{provider="jumpcloud",result="ok"}`:                  2,
		`credbroker_upstream_request_duration_seconds_sum{provider="jumpcloud",result="ok"}`:                    3.03,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="0.01"}`:       0,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="0.04"}`:       1,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="2.56"}`:       1,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="5.12"}`:       2,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="20.48"}`:      2,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="ok",le="+Inf"}`:       2,
		`credbroker_upstream_request_duration_seconds_bucket{provider="jumpcloud",result="rejected",le="0.01"}`: 1,
	} {
		v, ok := got[sample]
		if !ok {
			t.Errorf("%s is missing", sample)
		} else if diff := v - want; diff > 1e-9 || diff < -1e-9 {
			t.Errorf("%s = %v, want %v", sample, v, want)
		}
	}
	// The runtime's and the process's metrics are there too.
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total"} {
		if _, ok := got[name]; !ok {
			t.Errorf("%s is missing", name)
		}
	}
}

// Accounts are counted by state, every state shown even at 0, and each
// secret's expiry by its fingerprint, all as they are at the scrape.
func TestAccountMetrics(t *testing.T) {
	t.Parallel()
	var src accountsSource
	m := metrics.New(src.get)
	now := time.Now()
	src.set(
		metrics.Account{ID: "acme", State: tokens.StateActive, SecretExpiry: map[string]time.Time{
			"fp-future": now.Add(time.Hour),
			"fp-past":   now.Add(-time.Hour),
		}},
		metrics.Account{ID: "beta", State: tokens.StateActive},
		metrics.Account{ID: "gamma", State: tokens.StateNeedsAttention},
	)
	got := scrape(t, m)
	for sample, want := range map[string]float64{
		`credbroker_accounts{state="active"}`:          2,
		`credbroker_accounts{state="degraded"}`:        0,
		`credbroker_accounts{state="needs_attention"}`: 1,
	} {
		if v, ok := got[sample]; !ok || v != want {
			t.Errorf("%s = %v (present: %v), want %v", sample, v, ok, want)
		}
	}
	future, ok := got[`credbroker_secret_expires_in_seconds{account="acme",secret_hmac="fp-future"}`]
	if !ok || future <= 0 || future > time.Hour.Seconds() {
		t.Errorf("a secret expiring in an hour: %v (present: %v), want (0, 3600]", future, ok)
	}
	past, ok := got[`credbroker_secret_expires_in_seconds{account="acme",secret_hmac="fp-past"}`]
	if !ok || past >= 0 {
		t.Errorf("a secret expired an hour ago: %v (present: %v), want < 0", past, ok)
	}
	if n := countPrefix(got, "credbroker_secret_expires_in_seconds{"); n != 2 {
		t.Errorf("%d secret expiry samples, want 2", n)
	}

	// The next scrape reads the accounts again.
	src.set(metrics.Account{ID: "acme", State: tokens.StateDegraded})
	got = scrape(t, m)
	for sample, want := range map[string]float64{
		`credbroker_accounts{state="active"}`:          0,
		`credbroker_accounts{state="degraded"}`:        1,
		`credbroker_accounts{state="needs_attention"}`: 0,
	} {
		if v, ok := got[sample]; !ok || v != want {
			t.Errorf("second scrape: %s = %v (present: %v), want %v", sample, v, ok, want)
		}
	}
	if n := countPrefix(got, "credbroker_secret_expires_in_seconds{"); n != 0 {
		t.Errorf("second scrape: %d secret expiry samples, want 0", n)
	}
}

func countPrefix(samples map[string]float64, prefix string) int {
	n := 0
	for s := range samples {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}
