package server_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/devpki"
)

// BenchmarkCacheHitOverMTLS compares GetToken cache hits (authenticated by
// client certificate, grant-checked, rate-limited and durably audited) with
// the open health check, over the same mTLS connection, 50 callers at once.
// bench/ghz.sh measures the same from another process.
func BenchmarkCacheHitOverMTLS(b *testing.B) {
	cfg, fake, logs := newConfig(b)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ca := withTLS(b, &cfg)
	cfg.Gate.RateLimit = 1e9
	br := startWith(b, cfg, fake, logs)
	br.link(b, "bench")
	br.grant(b, "bench", "spiffe://bench/caller")
	conn := br.dial(b, "", clientCert(b, ca, devpki.Identity{URIs: []string{"spiffe://bench/caller"}}))
	tokens := credbrokerv1.NewTokenServiceClient(conn)
	health := healthpb.NewHealthClient(conn)
	req := &credbrokerv1.GetTokenRequest{Name: "accounts/bench"}
	b.Run("Health", func(b *testing.B) {
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("GetToken", func(b *testing.B) {
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tokens.GetToken(context.Background(), req); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkProxyGet compares GETs through the egress proxy (caller key,
// grant, rate limit, injected API key, durable audit) with the same GETs
// sent straight to the upstream, 50 callers at once over keep-alive
// connections. bench/proxy.sh measures the same from another process.
func BenchmarkProxyGet(b *testing.B) {
	cfg, fake, logs := newConfig(b)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Gate.RateLimit = 1e9
	br := startWith(b, cfg, fake, logs)
	br.linkAPIKey(b, "bench")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}}
	get := func(b *testing.B, url string, header http.Header) {
		b.SetParallelism(25)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				req, _ := http.NewRequest(http.MethodGet, url, nil)
				req.Header = header
				resp, err := client.Do(req)
				if err != nil {
					b.Error(err)
					return
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Errorf("HTTP %d", resp.StatusCode)
					return
				}
			}
		})
	}
	b.Run("Direct", func(b *testing.B) {
		get(b, cfg.Provider.JumpCloudAPIURLUS+"/v2/systems", http.Header{"X-Api-Key": {apiKey}, "X-Org-Id": {orgID}})
	})
	b.Run("Proxied", func(b *testing.B) {
		get(b, br.proxyURL+"/v1/accounts/bench/proxy/v2/systems", http.Header{"Proxy-Authorization": {"Bearer " + br.keys.svc}})
	})
}
