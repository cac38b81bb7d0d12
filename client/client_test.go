package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/client"
)

// grpcConn connects to the broker with a caller key, as any gRPC client can.
func grpcConn(target, key string) (*grpc.ClientConn, error) {
	return grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(client.CallerKey(key)))
}

func newDemo(t testing.TB) *demo {
	t.Helper()
	d, err := startDemo()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.stop)
	return d
}

// newClient connects to the demo broker as its service.
func newClient(t testing.TB, d *demo, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.New(d.target, append([]client.Option{client.WithCallerKey(d.key)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// countingClient counts the GetToken calls the client makes.
func countingClient(t testing.TB, d *demo, calls *atomic.Int32) *client.Client {
	t.Helper()
	return newClient(t, d, client.WithDialOptions(grpc.WithUnaryInterceptor(
		func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			calls.Add(1)
			return invoker(ctx, method, req, reply, cc, opts...)
		})))
}

func TestTokenSourceCachesLocally(t *testing.T) {
	d := newDemo(t)
	var calls atomic.Int32
	c := countingClient(t, d, &calls)
	ts := c.TokenSource("accounts/acme")
	first, err := ts.Token()
	if err != nil || first.AccessToken != d.fake.LastToken() || first.Type() != "Bearer" || !first.Valid() {
		t.Fatalf("Token(): err %v, matches the fake's token %v, type %q, valid %v", err, first.AccessToken == d.fake.LastToken(), first.Type(), first.Valid())
	}
	for range 100 {
		if tok, err := ts.Token(); err != nil || tok != first {
			t.Fatalf("cached Token(): err %v; want the same *oauth2.Token", err)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("%d GetToken calls for 101 Token() calls, want 1", calls.Load())
	}
	// Shortly before expiry the source asks the broker again.
	client.AgeCachedToken(ts)
	if tok, err := ts.Token(); err != nil || tok == first || calls.Load() != 2 {
		t.Fatalf("aged Token(): err %v, new pointer %v, %d calls; want a fresh fetch", err, tok != first, calls.Load())
	}
}

func TestTokenSourceReturnsBrokerErrors(t *testing.T) {
	d := newDemo(t)
	c := newClient(t, d)
	if _, err := c.TokenSource("accounts/nope").Token(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err = %v, want PermissionDenied", err)
	}
	// Through oauth2.NewClient the status is still reachable.
	_, err := oauth2.NewClient(context.Background(), c.TokenSource("accounts/nope")).Get(d.apiURL + "/v2/x")
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("oauth2 client err = %v", err)
	}
}

func TestRoundTripper(t *testing.T) {
	d := newDemo(t)
	c := newClient(t, d)
	hc := &http.Client{Transport: c.RoundTripper("accounts/acme", nil)}

	resp, err := hc.Get("/v2/systemgroups?limit=10")
	if err != nil || resp.StatusCode != http.StatusOK || body(resp) != "GET /api/v2/systemgroups?limit=10" {
		t.Fatalf("relative GET: %v, %v", resp, err)
	}
	resp, err = hc.Get(d.apiURL + "/systemusers")
	if err != nil || resp.StatusCode != http.StatusOK || body(resp) != "GET /api/systemusers?" {
		t.Fatalf("absolute GET to the API: %v, %v", resp, err)
	}

	var foreignHits atomic.Int32
	foreign := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { foreignHits.Add(1) }))
	defer foreign.Close()
	if _, err := hc.Get(foreign.URL + "/steal"); !errors.Is(err, client.ErrForeignHost) || foreignHits.Load() != 0 {
		t.Fatalf("request to another host: err %v, %d hits; want ErrForeignHost and none", err, foreignHits.Load())
	}
}

// BenchmarkTokenSourceCacheHit is the client's hot path.
func BenchmarkTokenSourceCacheHit(b *testing.B) {
	d := newDemo(b)
	c := newClient(b, d)
	ts := c.TokenSource("accounts/acme")
	if _, err := ts.Token(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ts.Token(); err != nil {
			b.Fatal(err)
		}
	}
}

func TestCallerKeyIsNotSentInPlaintextOffLoopback(t *testing.T) {
	if _, err := client.New("broker.example:443", client.WithCallerKey("cbk_x")); err == nil || !strings.Contains(err.Error(), "WithTLS") {
		t.Fatalf("New with a key, no TLS and a remote target: %v", err)
	}
	c, err := client.New("broker.example:443", client.WithCallerKey("cbk_x"), client.WithTLS(&tls.Config{}))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}
