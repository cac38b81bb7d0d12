// Package ops serves what operators' tools poll, with no secret in it and
// asking no credentials: /metrics for Prometheus (with what it shows of
// each account), /healthz (the process answers) and /readyz (it can serve
// calls: not shutting down, the storage in reach, the audit trail
// writable). It is
// apart from package api, whose every call passes the gate.
package ops

import (
	"encoding/hex"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Handler serves /metrics from met, /healthz, and /readyz, which says not
// ready, and why, while notReady returns a reason; with profiling, Go's
// profiles too, under /debug/pprof/ (but for the command line, which may
// hold what an operator typed).
func Handler(met *metrics.Metrics, notReady func() string, profiling bool) http.Handler {
	mux := http.NewServeMux()
	if profiling {
		mux.HandleFunc("GET /debug/pprof/", pprof.Index)
		mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	}
	mux.Handle("GET /metrics", promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if why := notReady(); why != "" {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}

// Accounts is what /metrics shows of each account of tm (the source of
// metrics.New); mac keys the labels of secrets.
func Accounts(tm *tokens.Manager, mac *keyring.MACKey) []metrics.Account {
	health := tm.Health()
	out := make([]metrics.Account, len(health))
	for i, h := range health {
		out[i] = metrics.Account{ID: h.ID, State: h.State, SecretExpiry: map[string]time.Time{}}
		for _, s := range h.Secrets {
			if !s.ExpireTime.IsZero() {
				out[i].SecretExpiry[secretMetricLabel(mac, s.ID)] = s.ExpireTime
			}
		}
	}
	return out
}

// secretMetricLabel names a secret in /metrics: 12 hex digits of a keyed
// hash of its secret_id. The secret_id itself is a plain SHA-256 of the
// secret, against which anyone who can scrape /metrics could check a guess.
// The MAC key is kept in the database, so the label survives restarts.
func secretMetricLabel(mac *keyring.MACKey, secretID string) string {
	return hex.EncodeToString(mac.Sum("secret-metric-label", secretID)[:6])
}
