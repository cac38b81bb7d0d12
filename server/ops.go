package server

import (
	"encoding/hex"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// newOpsServer serves what operators' tools poll: /metrics for
// Prometheus, /healthz (the process answers) and /readyz (it can serve
// calls: not shutting down, and the audit trail can be written). It serves
// TLS whenever the broker has a certificate, asking for no client
// certificate: scrapers and probes have none.
func newOpsServer(cfg Config, tlsm tlsMaterial, met *metrics.Metrics, al *audit.Log, draining *atomic.Bool) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(met.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case draining.Load():
			http.Error(w, "shutting down", http.StatusServiceUnavailable)
		case al.Failing():
			http.Error(w, "the audit trail cannot be written, so calls are refused; see the server log", http.StatusServiceUnavailable)
		default:
			_, _ = w.Write([]byte("ready\n"))
		}
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	if tlsm.cert != nil {
		srv.TLSConfig = mtls.ServerTLSConfig(*tlsm.cert, false)
	}
	return srv
}

// accountMetrics is what /metrics shows of each account.
func accountMetrics(tm *tokens.Manager, mac *keyring.MACKey) []metrics.Account {
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
