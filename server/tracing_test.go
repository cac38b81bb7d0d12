package server_test

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/prototext"

	"github.com/credbroker/credbroker/server"
)

// collector is an OTLP trace receiver on loopback that keeps what it gets.
type collector struct {
	collectortrace.UnimplementedTraceServiceServer
	mu    sync.Mutex
	spans []string // each span's name
	all   strings.Builder
}

func (c *collector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.all.WriteString(prototext.Format(req))
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				c.spans = append(c.spans, sp.GetName())
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	g := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(g, c)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	return c, lis.Addr().String()
}

// TestTracing: with --tracing otlp the broker sends spans of its gRPC calls
// and of its token requests to JumpCloud to the collector named by the
// standard OTEL_EXPORTER_OTLP_ENDPOINT, with no secret in them; off (the
// default), it sends nothing.
func TestTracing(t *testing.T) {
	col, addr := startCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+addr)
	t.Setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")

	cfg, fake, logs := newConfig(t)
	off := startWith(t, cfg, fake, logs)
	off.link(t, "acme")
	off.token(t, "acme")
	off.stop()
	if n := len(col.spans); n != 0 {
		t.Fatalf("tracing is off by default, yet %d spans were sent", n)
	}

	cfg, fake, logs = newConfig(t)
	cfg.Tracing = server.TracingOTLP
	b := startWith(t, cfg, fake, logs)
	b.link(t, "acme")
	tok := b.token(t, "acme")
	b.stop() // sends the buffered spans

	col.mu.Lock()
	defer col.mu.Unlock()
	names := strings.Join(col.spans, "\n")
	for _, want := range []string{"credbroker.v1.AccountService/CreateAccount", "credbroker.v1.TokenService/GetToken", "HTTP POST"} {
		if !strings.Contains(names, want) {
			t.Errorf("no %q span among:\n%s", want, names)
		}
	}
	if !strings.Contains(col.all.String(), `"service.name"`) || !strings.Contains(col.all.String(), `"credbroker"`) {
		t.Error("spans do not name the service credbroker")
	}
	assertAbsent(t, "exported spans", []byte(col.all.String()), clientSecret, tok.GetAccessToken(), b.keys.admin, b.keys.svc)

	cfg.Tracing = "zipkin"
	if _, err := server.New(cfg); err == nil || !strings.Contains(err.Error(), `tracing must be "off" or "otlp"`) {
		t.Errorf("an unknown tracing mode: %v", err)
	}
}
