// Package metrics holds the broker's Prometheus metrics. Labels name only
// what an admin created (account IDs, keyed fingerprints of secrets) or a
// fixed set of values, never a secret and never caller input, so their
// number stays bounded.
package metrics

import (
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/credbroker/credbroker/internal/version"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Metrics is the broker's registry and the metrics it updates as it works.
type Metrics struct {
	Registry *prometheus.Registry
	// GRPC measures every gRPC call (its interceptors go on the server).
	GRPC *grpcprom.ServerMetrics

	tokensIssued     *prometheus.CounterVec
	cacheHit         prometheus.Counter
	cacheMiss        prometheus.Counter
	upstreamDuration *prometheus.HistogramVec
	webhookAttempts  *prometheus.CounterVec
}

// New registers the broker's metrics, and the Go runtime's and the
// process's, in a new registry. accounts is read at each scrape.
func New(accounts func() []Account) *Metrics {
	cache := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "credbroker_token_cache_lookups_total",
		Help: "GetToken and proxy lookups of an account's cached token, by whether a cached token would do (hit) or one had to be fetched (miss).",
	}, []string{"result"})
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		GRPC:     grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram()),
		tokensIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_token_requests_total",
			Help: "GetToken calls by account and outcome (the gRPC code); account is empty for calls refused before the account was known to exist and be granted.",
		}, []string{"account", "outcome"}),
		cacheHit:  cache.WithLabelValues("hit"),
		cacheMiss: cache.WithLabelValues("miss"),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_upstream_request_duration_seconds",
			Help:    "Requests to providers (token requests, API-key checks) by provider and result: ok, rejected, unavailable or error.",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 12), // 10 ms to 20 s
		}, []string{"provider", "result"}),
		webhookAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_webhook_attempts_total",
			Help: "Deliveries of credential events to webhook endpoints by webhook and result: delivered, failed (tried again) or gave_up.",
		}, []string{"webhook", "result"}),
	}
	v := version.Get()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "credbroker_build_info",
		Help:        "Always 1; its labels say which build of credbroker this is.",
		ConstLabels: prometheus.Labels{"version": v.Version, "commit": v.Commit, "build_date": v.Date, "goversion": v.GoVersion},
	})
	build.Set(1)
	m.Registry.MustRegister(build, m.GRPC, m.tokensIssued, cache, m.upstreamDuration, m.webhookAttempts, accountsCollector(accounts),
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// TokenRequest counts a GetToken call; account is "" if the caller was not
// shown that the account exists.
func (m *Metrics) TokenRequest(account, outcome string) {
	m.tokensIssued.WithLabelValues(account, outcome).Inc()
}

// CacheLookup counts a lookup of a cached token.
func (m *Metrics) CacheLookup(hit bool) {
	if hit {
		m.cacheHit.Inc()
	} else {
		m.cacheMiss.Inc()
	}
}

// UpstreamRequest records a request to a provider.
func (m *Metrics) UpstreamRequest(provider, result string, took time.Duration) {
	m.upstreamDuration.WithLabelValues(provider, result).Observe(took.Seconds())
}

// WebhookAttempt counts an attempt to deliver an event to a webhook.
func (m *Metrics) WebhookAttempt(webhook, result string) {
	m.webhookAttempts.WithLabelValues(webhook, result).Inc()
}

// Account is what a scrape shows of one account.
type Account struct {
	ID    string
	State tokens.State
	// SecretExpiry: each secret's expire time by its keyed fingerprint
	// (never its secret_id, which confirms a guessed secret), for the
	// secrets that have one.
	SecretExpiry map[string]time.Time
}

var (
	accountsDesc = prometheus.NewDesc("credbroker_accounts",
		"Linked accounts by state: active, degraded or needs_attention.", []string{"state"}, nil)
	secretExpiryDesc = prometheus.NewDesc("credbroker_secret_expires_in_seconds",
		"Seconds until each secret with an expire time expires (negative once it has). secret_hmac is a keyed fingerprint of the secret, "+
			"stable across restarts but not its secret_id, so that it cannot confirm a guessed secret: tell an account's secrets apart by their expire times (GetAccount).",
		[]string{"account", "secret_hmac"}, nil)
)

// accountsCollector reads the accounts' states and secrets at each scrape.
type accountsCollector func() []Account

func (c accountsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- accountsDesc
	ch <- secretExpiryDesc
}

func (c accountsCollector) Collect(ch chan<- prometheus.Metric) {
	byState := map[tokens.State]int{tokens.StateActive: 0, tokens.StateDegraded: 0, tokens.StateNeedsAttention: 0}
	now := time.Now()
	for _, a := range c() {
		byState[a.State]++
		for id, t := range a.SecretExpiry {
			ch <- prometheus.MustNewConstMetric(secretExpiryDesc, prometheus.GaugeValue, t.Sub(now).Seconds(), a.ID, id)
		}
	}
	for state, n := range byState {
		ch <- prometheus.MustNewConstMetric(accountsDesc, prometheus.GaugeValue, float64(n), string(state))
	}
}
