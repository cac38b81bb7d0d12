package mtls_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/server/internal/mtls"
)

// issuer is a test certificate authority.
type issuer struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// newCA makes a CA, signed by parent (an intermediate) or by itself.
func newCA(t *testing.T, name string, parent *issuer) *issuer {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	signer := &issuer{cert: tmpl, key: key}
	if parent != nil {
		signer = parent
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer.cert, &key.PublicKey, signer.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &issuer{cert: cert, key: key}
}

func (ca *issuer) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// client issues a client certificate valid from a minute ago for an hour,
// after edit has changed its template; chain is sent after it.
func (ca *issuer) client(t *testing.T, edit func(*x509.Certificate), chain ...*issuer) tls.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if edit != nil {
		edit(tmpl)
	}
	return ca.issue(t, tmpl, chain...)
}

// server issues a certificate for a TLS server on 127.0.0.1.
func (ca *issuer) server(t *testing.T) tls.Certificate {
	t.Helper()
	return ca.issue(t, &x509.Certificate{
		SerialNumber: serial(t),
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
}

func (ca *issuer) issue(t *testing.T, tmpl *x509.Certificate, chain ...*issuer) tls.Certificate {
	t.Helper()
	key := newKey(t)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	for _, ca := range chain {
		c.Certificate = append(c.Certificate, ca.cert.Raw)
	}
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func uris(t *testing.T, raw ...string) []*url.URL {
	t.Helper()
	var us []*url.URL
	for _, r := range raw {
		u, err := url.Parse(r)
		if err != nil {
			t.Fatal(err)
		}
		us = append(us, u)
	}
	return us
}

// answer is what a server learned of a call's principal.
type answer struct {
	Principal string
	NoCert    bool
	Err       string
}

func (a answer) String() string {
	switch {
	case a.NoCert:
		return "ErrNoCertificate"
	case a.Err != "":
		return "error " + a.Err
	}
	return "principal " + a.Principal
}

// transport asks a real server over loopback TLS what principal a client
// certificate proves (none: nil). at, if set, is the time the server asks
// about, given the certificate's NotAfter; else now.
type transport interface {
	principal(t *testing.T, cert *tls.Certificate, at func(notAfter time.Time) time.Time) answer
}

// atHeader carries the time to ask about, for tests of connections that
// outlive their certificates.
const atHeader = "x-at"

// httpServer serves with an HTTPVerifier over roots in its ConnContext, as
// the egress proxy does, and asks every client for a certificate.
type httpServer struct {
	url     string
	rootCAs *x509.CertPool
}

func startHTTP(t *testing.T, serverCA *issuer, roots *x509.CertPool) *httpServer {
	t.Helper()
	v := mtls.NewHTTPVerifier(roots)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		if at := r.Header.Get(atHeader); at != "" {
			var err error
			if now, err = time.Parse(time.RFC3339Nano, at); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
		}
		var a answer
		p, err := v.Principal(r, now)
		switch {
		case errors.Is(err, mtls.ErrNoCertificate):
			a.NoCert = true
		case err != nil:
			a.Err = err.Error()
		default:
			a.Principal = p
		}
		json.NewEncoder(w).Encode(a)
	}))
	// Asked for a certificate even without roots: the verifier must then
	// take it for none.
	srv.TLS = mtls.ServerTLSConfig(serverCA.server(t), true)
	srv.Config.ConnContext = v.ConnContext
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &httpServer{url: srv.URL, rootCAs: serverCA.pool()}
}

// client returns an HTTP client with its own connections.
func (s *httpServer) client(t *testing.T, cert *tls.Certificate) *http.Client {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.rootCAs}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	tr := &http.Transport{TLSClientConfig: cfg}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// ask makes a request with c, and says whether it reused a connection.
func (s *httpServer) ask(t *testing.T, c *http.Client, at time.Time) (a answer, reused bool) {
	t.Helper()
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, s.url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !at.IsZero() {
		req.Header.Set(atHeader, at.Format(time.RFC3339Nano))
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatalf("decode the answer (HTTP %d): %v", resp.StatusCode, err)
	}
	io.Copy(io.Discard, resp.Body) // so that the connection is reused
	return a, reused
}

func (s *httpServer) principal(t *testing.T, cert *tls.Certificate, at func(time.Time) time.Time) answer {
	t.Helper()
	var when time.Time
	if at != nil {
		when = at(cert.Leaf.NotAfter)
	}
	a, _ := s.ask(t, s.client(t, cert), when)
	return a
}

// grpcServer serves gRPC with creds; an interceptor reports each call's
// principal in a header, as the broker's authentication does.
type grpcServer struct {
	addr    string
	rootCAs *x509.CertPool
}

const (
	principalHeader = "x-principal"
	noCertHeader    = "x-no-certificate"
)

func startGRPC(t *testing.T, serverCA *issuer, creds credentials.TransportCredentials) *grpcServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(creds), grpc.UnaryInterceptor(
		func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			now := time.Now()
			if at := metadata.ValueFromIncomingContext(ctx, atHeader); len(at) > 0 {
				var err error
				if now, err = time.Parse(time.RFC3339Nano, at[0]); err != nil {
					return nil, status.Error(codes.InvalidArgument, err.Error())
				}
			}
			p, err := mtls.Principal(ctx, now)
			switch {
			case errors.Is(err, mtls.ErrNoCertificate):
				grpc.SetHeader(ctx, metadata.Pairs(noCertHeader, "1"))
			case err != nil:
				return nil, status.Error(codes.Unauthenticated, err.Error())
			default:
				grpc.SetHeader(ctx, metadata.Pairs(principalHeader, p))
			}
			return handler(ctx, req)
		}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return &grpcServer{addr: lis.Addr().String(), rootCAs: serverCA.pool()}
}

func (s *grpcServer) principal(t *testing.T, cert *tls.Certificate, at func(time.Time) time.Time) answer {
	t.Helper()
	cfg := &tls.Config{RootCAs: s.rootCAs}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := context.Background()
	if at != nil {
		ctx = metadata.AppendToOutgoingContext(ctx, atHeader, at(cert.Leaf.NotAfter).Format(time.RFC3339Nano))
	}
	var md metadata.MD
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
	if status.Code(err) == codes.Unauthenticated {
		return answer{Err: status.Convert(err).Message()}
	}
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if len(md.Get(noCertHeader)) > 0 {
		return answer{NoCert: true}
	}
	if p := md.Get(principalHeader); len(p) == 1 {
		return answer{Principal: p[0]}
	}
	t.Fatalf("the server reported nothing: %v", md)
	return answer{}
}

// transports starts one HTTP and one gRPC server that accept client
// certificates signed by roots.
func transports(t *testing.T, roots *x509.CertPool) map[string]transport {
	t.Helper()
	serverCA := newCA(t, "server CA", nil)
	return map[string]transport{
		"http": startHTTP(t, serverCA, roots),
		"grpc": startGRPC(t, serverCA, mtls.ServerCredentials(serverCA.server(t), roots)),
	}
}

// A verified certificate proves its first URI SAN, else its first DNS SAN,
// else its CN, each in its own namespace; one that fails verification, or
// names no principal, is refused with a reason.
func TestCertificatePrincipal(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	intermediate := newCA(t, "client intermediate CA", root)
	stranger := newCA(t, "someone else's CA", nil)
	servers := transports(t, root.pool())

	long := "spiffe://example.org/" + strings.Repeat("a", mtls.MaxName)
	tests := []struct {
		name string
		cert tls.Certificate
		want answer // Err: a part of the error
	}{
		{
			name: "first URI SAN, before DNS SAN and CN",
			cert: root.client(t, func(c *x509.Certificate) {
				c.URIs = uris(t, "spiffe://example.org/billing", "spiffe://example.org/other")
				c.DNSNames = []string{"billing.example.org"}
				c.Subject.CommonName = "billing"
			}),
			want: answer{Principal: "spiffe://example.org/billing"},
		},
		{
			name: "URI SAN of another scheme",
			cert: root.client(t, func(c *x509.Certificate) {
				c.URIs = uris(t, "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66")
			}),
			want: answer{Principal: "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66"},
		},
		{
			name: "first DNS SAN, before CN",
			cert: root.client(t, func(c *x509.Certificate) {
				c.DNSNames = []string{"billing.example.org", "other.example.org"}
				c.Subject.CommonName = "billing"
			}),
			want: answer{Principal: "dns:billing.example.org"},
		},
		{
			name: "CN",
			cert: root.client(t, func(c *x509.Certificate) { c.Subject.CommonName = "billing team" }),
			want: answer{Principal: "cn:billing team"},
		},
		{
			name: "CN spelled like a SPIFFE ID stays a CN",
			cert: root.client(t, func(c *x509.Certificate) { c.Subject.CommonName = "spiffe://example.org/billing" }),
			want: answer{Principal: "cn:spiffe://example.org/billing"},
		},
		{
			name: "CN spelled like the broker's own name stays a CN",
			cert: root.client(t, func(c *x509.Certificate) { c.Subject.CommonName = "credbroker" }),
			want: answer{Principal: "cn:credbroker"},
		},
		{
			name: "signed by an intermediate sent along",
			cert: intermediate.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") }, intermediate),
			want: answer{Principal: "spiffe://example.org/billing"},
		},
		{
			name: "no name",
			cert: root.client(t, nil),
			want: answer{Err: "names no principal"},
		},
		{
			name: "URI SAN in the dns namespace",
			cert: root.client(t, func(c *x509.Certificate) {
				c.URIs = uris(t, "dns:billing.example.org")
				c.DNSNames = []string{"billing.example.org"}
			}),
			want: answer{Err: "is not a principal"},
		},
		{
			name: "URI SAN in the cn namespace",
			cert: root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "cn:admin") }),
			want: answer{Err: "is not a principal"},
		},
		{
			name: "URI SAN naming a local operator",
			cert: root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "unix-uid:0") }),
			want: answer{Err: "is not a principal"},
		},
		{
			name: "URI SAN too long",
			cert: root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, long) }),
			want: answer{Err: "is not a principal"},
		},
		{
			name: "signed by another CA",
			cert: stranger.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") }),
			want: answer{Err: "not signed by the broker's client CA"},
		},
		{
			name: "intermediate not sent",
			cert: intermediate.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") }),
			want: answer{Err: "not signed by the broker's client CA"},
		},
		{
			name: "expired",
			cert: root.client(t, func(c *x509.Certificate) {
				c.Subject.CommonName = "billing"
				c.NotBefore, c.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
			}),
			want: answer{Err: "expired or not yet valid"},
		},
		{
			name: "not yet valid",
			cert: root.client(t, func(c *x509.Certificate) {
				c.Subject.CommonName = "billing"
				c.NotBefore, c.NotAfter = time.Now().Add(time.Hour), time.Now().Add(2*time.Hour)
			}),
			want: answer{Err: "expired or not yet valid"},
		},
		{
			name: "for servers only",
			cert: root.client(t, func(c *x509.Certificate) {
				c.Subject.CommonName = "billing"
				c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
			}),
			want: answer{Err: "client certificate not accepted"},
		},
	}
	for transportName, srv := range servers {
		t.Run(transportName, func(t *testing.T) {
			t.Parallel()
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					got := srv.principal(t, &tc.cert, nil)
					if got.Principal != tc.want.Principal || got.NoCert || !strings.Contains(got.Err, tc.want.Err) || (tc.want.Err == "") != (got.Err == "") {
						t.Errorf("got %v, want %v", got, tc.want)
					}
				})
			}
			t.Run("no certificate", func(t *testing.T) {
				if got := srv.principal(t, nil, nil); !got.NoCert {
					t.Errorf("got %v, want ErrNoCertificate", got)
				}
			})
		})
	}
}

// A refusal names the certificate's validity, so that its holder can tell
// what to renew.
func TestExpiredCertificateMessage(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	notBefore := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	notAfter := time.Date(2021, 6, 7, 8, 9, 10, 0, time.UTC)
	cert := root.client(t, func(c *x509.Certificate) {
		c.Subject.CommonName = "billing"
		c.NotBefore, c.NotAfter = notBefore, notAfter
	})
	for name, srv := range transports(t, root.pool()) {
		want := "valid 2020-01-02T03:04:05Z to 2021-06-07T08:09:10Z"
		if got := srv.principal(t, &cert, nil); !strings.Contains(got.Err, want) {
			t.Errorf("%s: got %v, want an error naming %q", name, got, want)
		}
	}
}

// A connection may outlive its certificate: from its NotAfter on, calls on
// it are refused, though the certificate was valid at the handshake.
func TestConnectionOutlivesCertificate(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	cert := root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") })
	atNotAfter := func(notAfter time.Time) time.Time { return notAfter }
	after := func(notAfter time.Time) time.Time { return notAfter.Add(time.Second) }
	for name, srv := range transports(t, root.pool()) {
		if got := srv.principal(t, &cert, atNotAfter); got.Principal != "spiffe://example.org/billing" {
			t.Errorf("%s: at NotAfter: got %v, want the principal", name, got)
		}
		if got := srv.principal(t, &cert, after); !strings.Contains(got.Err, "expired during the connection") {
			t.Errorf("%s: after NotAfter: got %v, want an error saying the certificate expired during the connection", name, got)
		}
	}
}

// The HTTP verifier verifies a connection's certificate once and answers
// each of its requests from that.
func TestHTTPVerifierSameConnection(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	srv := startHTTP(t, newCA(t, "server CA", nil), root.pool())
	cert := root.client(t, func(c *x509.Certificate) { c.DNSNames = []string{"billing.example.org"} })
	c := srv.client(t, &cert)
	for i, at := range []time.Time{{}, cert.Leaf.NotAfter.Add(time.Minute), {}} {
		got, reused := srv.ask(t, c, at)
		if reused != (i > 0) {
			t.Fatalf("request %d: reused a connection: %v", i, reused)
		}
		want := "dns:billing.example.org"
		if !at.IsZero() {
			want = ""
		}
		if got.Principal != want || (want == "") != strings.Contains(got.Err, "expired during the connection") {
			t.Errorf("request %d (at %v): got %v", i, at, got)
		}
	}
}

// Without client CAs, no certificate proves anything: a caller must use a
// caller key.
func TestNoClientCAs(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	cert := root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") })
	for name, srv := range transports(t, nil) {
		if got := srv.principal(t, &cert, nil); !got.NoCert {
			t.Errorf("%s: got %v, want ErrNoCertificate", name, got)
		}
	}
}

// A clone of the gRPC credentials verifies as the original does.
func TestServerCredentialsClone(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	serverCA := newCA(t, "server CA", nil)
	srv := startGRPC(t, serverCA, mtls.ServerCredentials(serverCA.server(t), root.pool()).Clone())
	cert := root.client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") })
	if got := srv.principal(t, &cert, nil); got.Principal != "spiffe://example.org/billing" {
		t.Errorf("valid certificate: got %v", got)
	}
	other := newCA(t, "someone else's CA", nil).client(t, func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") })
	if got := srv.principal(t, &other, nil); !strings.Contains(got.Err, "not signed by the broker's client CA") {
		t.Errorf("certificate of another CA: got %v", got)
	}
}

func TestPrincipalWithoutVerifiedPeer(t *testing.T) {
	t.Parallel()
	for name, ctx := range map[string]context.Context{
		"no peer":        context.Background(),
		"plain TLS peer": peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{}}),
		"no auth at all": peer.NewContext(context.Background(), &peer.Peer{}),
	} {
		if _, err := mtls.Principal(ctx, time.Now()); !errors.Is(err, mtls.ErrNoCertificate) {
			t.Errorf("%s: err = %v, want ErrNoCertificate", name, err)
		}
	}
}

func TestServerTLSConfig(t *testing.T) {
	t.Parallel()
	cert := newCA(t, "server CA", nil).server(t)
	for _, tc := range []struct {
		requestCert bool
		want        tls.ClientAuthType
	}{{false, tls.NoClientCert}, {true, tls.RequestClientCert}} {
		cfg := mtls.ServerTLSConfig(cert, tc.requestCert)
		if cfg.ClientAuth != tc.want || cfg.MinVersion != tls.VersionTLS12 || len(cfg.Certificates) != 1 {
			t.Errorf("ServerTLSConfig(cert, %v): ClientAuth %v, MinVersion %x, %d certificates; want %v, TLS 1.2, 1",
				tc.requestCert, cfg.ClientAuth, cfg.MinVersion, len(cfg.Certificates), tc.want)
		}
	}
}

func TestCheckPrincipal(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	name253 := strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
	tests := []struct {
		p       string
		wantErr string // "" for none; else a part of the error
	}{
		{"spiffe://example.org/billing", ""},
		{"urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66", ""},
		{"https://billing.example.org/", ""},
		{"spiffe://example.org/" + strings.Repeat("a", mtls.MaxName-len("spiffe://example.org/")), ""},
		{"spiffe://example.org/" + strings.Repeat("a", mtls.MaxName-len("spiffe://example.org/")+1), "printable characters"},
		{"dns:billing.example.org", ""},
		{"dns:billing_1.example-org", ""},
		{"dns:" + name253, ""},
		{"dns:" + name253 + "b", "DNS name"},
		{"dns:" + label63 + "a.example.org", "DNS name"},
		{"dns:", "DNS name"},
		{"dns:billing..example.org", "DNS name"},
		{"dns:billing.example.org.", "DNS name"},
		{"dns:billing example.org", "DNS name"},
		{"dns:*.example.org", "DNS name"},
		{"cn:billing team", ""},
		{"cn:" + strings.Repeat("é", mtls.MaxName/2), ""},
		{"cn:" + strings.Repeat("a", mtls.MaxName+1), "subject CN"},
		{"cn:", "subject CN"},
		{"cn:bill\ning", "subject CN"},
		{"cn:\xff", "subject CN"},
		{"credbroker", `use "dns:credbroker"`},
		{"billing.example.org", "is not typed"},
		{"spiffe:", "is not typed"},
		{"DNS:billing.example.org", "is reserved"},
		{"Cn:billing", "is reserved"},
		{"unix-uid:0", "is reserved"},
		{"", "printable characters"},
		{"spiffe://example.org/a b", "without spaces"},
		{"spiffe://example.org/\x00", "printable characters"},
	}
	for _, tc := range tests {
		err := mtls.CheckPrincipal(tc.p)
		if tc.wantErr == "" && err != nil {
			t.Errorf("CheckPrincipal(%.40q) = %v, want nil", tc.p, err)
		}
		if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("CheckPrincipal(%.40q) = %v, want an error with %q", tc.p, err, tc.wantErr)
		}
	}
}

// The principal a certificate proves passes CheckPrincipal, so an admin can
// grant it.
func TestCertificatePrincipalsPassCheck(t *testing.T) {
	t.Parallel()
	root := newCA(t, "client CA", nil)
	srv := transports(t, root.pool())["http"]
	for _, edit := range []func(*x509.Certificate){
		func(c *x509.Certificate) { c.URIs = uris(t, "spiffe://example.org/billing") },
		func(c *x509.Certificate) { c.DNSNames = []string{"billing.example.org"} },
		func(c *x509.Certificate) { c.Subject.CommonName = "billing team" },
	} {
		cert := root.client(t, edit)
		got := srv.principal(t, &cert, nil)
		if got.Principal == "" {
			t.Fatalf("got %v, want a principal", got)
		}
		if err := mtls.CheckPrincipal(got.Principal); err != nil {
			t.Errorf("CheckPrincipal(%q) = %v", got.Principal, err)
		}
	}
}

func TestIsURIPrincipal(t *testing.T) {
	t.Parallel()
	for p, want := range map[string]bool{
		"spiffe://example.org/billing": true,
		"urn:uuid:1":                   true,
		"mailto:ops@example.org":       true,
		"dns:billing.example.org":      false,
		"cn:billing":                   false,
		"unix-uid:0":                   false,
		"CN:billing":                   false,
		"spiffe:":                      false,
		"billing":                      false,
		"/billing":                     false,
		"":                             false,
		"callerKeys/ro":                false,
		"%zz:x":                        false,
	} {
		if got := mtls.IsURIPrincipal(p); got != want {
			t.Errorf("IsURIPrincipal(%q) = %v, want %v", p, got, want)
		}
	}
}

func TestValidDNSName(t *testing.T) {
	t.Parallel()
	label63 := strings.Repeat("a", 63)
	for name, want := range map[string]bool{
		"billing":                        true,
		"billing.example.org":            true,
		"Billing-1_x.Example.ORG":        true,
		label63 + ".org":                 true,
		label63 + "a.org":                false,
		strings.Repeat("a.", 126) + "a":  true, // 253
		strings.Repeat("a.", 126) + "aa": false,
		"":                               false,
		".":                              false,
		"billing.":                       false,
		".billing":                       false,
		"a..b":                           false,
		"*.example.org":                  false,
		"bill ing":                       false,
		"billing.exämple.org":            false,
		"billing/x":                      false,
	} {
		if got := mtls.ValidDNSName(name); got != want {
			t.Errorf("ValidDNSName(%.30q) = %v, want %v", name, got, want)
		}
	}
}
