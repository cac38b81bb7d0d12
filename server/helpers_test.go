package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/client"
	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/devpki"
	"github.com/credbroker/credbroker/server/jumpcloudfake"
)

const (
	clientID     = "sa-client"
	clientSecret = "canary-CLIENT-SECRET-5f1e9a"
	orgID        = "5a1234567890abcdef123456"
)

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// broker is a real server on loopback with a JumpCloud fake behind it.
// Admin calls use the bootstrap admin key; token calls use the caller key
// "svc", which link grants access.
type broker struct {
	srv      *server.Server
	fake     *jumpcloudfake.Fake
	cfg      server.Config
	logs     *syncBuffer
	keys     brokerKeys
	accounts credbrokerv1.AccountServiceClient
	callers  credbrokerv1.CallerServiceClient
	audit    credbrokerv1.AuditServiceClient
	tokens   credbrokerv1.TokenServiceClient
	health   healthpb.HealthClient
	conn     *grpc.ClientConn
	addr     string
	// proxyURL is the egress proxy's base URL.
	proxyURL string
	// opsURL is the ops listener's base URL.
	opsURL string
	// hubURL is the Hub's base URL; "" when it is off.
	hubURL string
	roots  *x509.CertPool // of the broker's TLS certificate; nil for plaintext
	// serveCancel asks the server to shut down; stop also waits for it and closes the client.
	serveCancel func()
	stop        func()
}

// newConfig points a server at a new fake and a new data directory.
func newConfig(t testing.TB) (server.Config, *jumpcloudfake.Fake, *syncBuffer) {
	t.Helper()
	fake := jumpcloudfake.New(clientID, clientSecret)
	us := httptest.NewServer(fake)
	t.Cleanup(us.Close)
	eu := httptest.NewServer(fake)
	t.Cleanup(eu.Close)
	logs := &syncBuffer{}
	cfg := server.Config{
		ListenAddr:      "127.0.0.1:0",
		ProxyListenAddr: "127.0.0.1:0",
		OpsListenAddr:   "127.0.0.1:0",
		HubListenAddr:   "127.0.0.1:0",
		Config: datadir.Config{
			DataDir:   t.TempDir(),
			MasterKey: "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=",
			Logger:    slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		},
	}
	cfg.Provider.JumpCloudTokenURLUS = us.URL + jumpcloudfake.TokenPath
	cfg.Provider.JumpCloudTokenURLEU = eu.URL + jumpcloudfake.TokenPath
	cfg.Provider.JumpCloudAPIURLUS = us.URL + jumpcloudfake.APIPath
	cfg.Provider.JumpCloudAPIURLEU = eu.URL + jumpcloudfake.APIPath
	cfg.Provider.Timeout = 2 * time.Second
	cfg.Audit.JournalSegmentSize = 256 << 10 // tests write little, and start many brokers
	return cfg, fake, logs
}

func startBroker(t testing.TB) *broker {
	t.Helper()
	cfg, fake, logs := newConfig(t)
	return startWith(t, cfg, fake, logs)
}

// brokerKeys are the caller keys of a data directory's test broker.
type brokerKeys struct{ admin, svc string }

// keysByDataDir remembers each data directory's keys across restarts: the
// bootstrap admin key is shown only on the first start.
var keysByDataDir sync.Map

const svcPrincipal = "callerKeys/svc"

func startWith(t testing.TB, cfg server.Config, fake *jumpcloudfake.Fake, logs *syncBuffer) *broker {
	t.Helper()
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	b := &broker{srv: srv, fake: fake, cfg: cfg, logs: logs, serveCancel: cancel}
	var once sync.Once
	var conns []*grpc.ClientConn
	b.stop = func() {
		once.Do(func() {
			for _, c := range conns {
				c.Close()
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(b.stop)
	b.addr = srv.Addr().String()
	b.proxyURL = "http://" + srv.ProxyAddr().String()
	b.opsURL = "http://" + srv.OpsAddr().String()
	if a := srv.HubAddr(); a != nil {
		b.hubURL = "http://" + a.String()
	}
	if cfg.TLSCertFile != "" { // the tests' dev CA signs the server's certificate too
		b.proxyURL = "https://" + srv.ProxyAddr().String()
		b.opsURL = "https://" + srv.OpsAddr().String()
		if a := srv.HubAddr(); a != nil {
			b.hubURL = "https://" + a.String()
		}
		pem, err := os.ReadFile(cfg.ClientCAFile)
		if err != nil {
			t.Fatal(err)
		}
		b.roots = x509.NewCertPool()
		b.roots.AppendCertsFromPEM(pem)
	}
	dial := func(key string) *grpc.ClientConn {
		c := b.dial(t, key, nil)
		conns = append(conns, c)
		return c
	}

	if k, ok := keysByDataDir.Load(cfg.DataDir); ok {
		b.keys = k.(brokerKeys)
	} else if b.keys.admin = srv.BootstrapAdminKey(); b.keys.admin != "" {
		resp, err := credbrokerv1.NewCallerServiceClient(dial(b.keys.admin)).CreateCallerKey(context.Background(), &credbrokerv1.CreateCallerKeyRequest{
			KeyId: "svc", CallerKey: &credbrokerv1.CallerKey{Role: credbrokerv1.Role_ROLE_CALLER, Description: "test service"},
		})
		if err != nil {
			t.Fatalf("CreateCallerKey: %v", err)
		}
		b.keys.svc = resp.GetKey()
		keysByDataDir.Store(cfg.DataDir, b.keys)
	}
	b.conn = dial(b.keys.admin)
	b.accounts = credbrokerv1.NewAccountServiceClient(b.conn)
	b.callers = credbrokerv1.NewCallerServiceClient(b.conn)
	b.audit = credbrokerv1.NewAuditServiceClient(b.conn)
	b.health = healthpb.NewHealthClient(b.conn)
	b.tokens = credbrokerv1.NewTokenServiceClient(dial(b.keys.svc))
	return b
}

// dial connects to the broker (over TLS if it serves TLS), sending key on
// every call and presenting cert, if given. The test closes the connection.
func (b *broker) dial(t testing.TB, key string, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	creds := insecure.NewCredentials()
	if b.roots != nil {
		cfg := &tls.Config{RootCAs: b.roots}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		creds = credentials.NewTLS(cfg)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(client.CallerKey(key)))
	}
	c, err := grpc.NewClient(b.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// withTLS makes cfg serve TLS with a certificate of a new dev CA, which
// also signs the client certificates the broker accepts.
func withTLS(t testing.TB, cfg *server.Config) *devpki.CA {
	t.Helper()
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Server(devpki.Identity{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := leaf.WriteFiles(dir, "server"); err != nil {
		t.Fatal(err)
	}
	cfg.TLSCertFile, cfg.TLSKeyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	cfg.ClientCAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(cfg.ClientCAFile, ca.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// clientCert issues a client certificate or fails the test.
func clientCert(t testing.TB, ca *devpki.CA, id devpki.Identity) *tls.Certificate {
	t.Helper()
	leaf, err := ca.Client(id)
	if err != nil {
		t.Fatal(err)
	}
	return &leaf.TLS
}

// grant lets principal get the account's tokens.
func (b *broker) grant(t testing.TB, id, principal string) {
	t.Helper()
	if _, err := b.accounts.AddAccountGrant(context.Background(), &credbrokerv1.AddAccountGrantRequest{Name: "accounts/" + id, Principal: principal}); err != nil {
		t.Fatalf("AddAccountGrant(%s, %s): %v", id, principal, err)
	}
}

// restart stops the broker and starts a new one on the same data and fake.
func (b *broker) restart(t testing.TB) *broker {
	t.Helper()
	b.stop()
	return startWith(t, b.cfg, b.fake, b.logs)
}

func jumpCloudRequest(id string) *credbrokerv1.CreateAccountRequest {
	return &credbrokerv1.CreateAccountRequest{
		AccountId: id,
		Account:   &credbrokerv1.Account{DisplayName: "Acme " + id},
		Credentials: &credbrokerv1.CreateAccountRequest_JumpcloudServiceAccount{JumpcloudServiceAccount: &credbrokerv1.JumpCloudServiceAccountCredentials{
			ClientId: clientID, ClientSecret: clientSecret, Region: credbrokerv1.Region_REGION_US, OrgId: orgID,
		}},
	}
}

// link links a JumpCloud account and grants the "svc" caller key access.
func (b *broker) link(t testing.TB, id string) *credbrokerv1.Account {
	t.Helper()
	resp, err := b.accounts.CreateAccount(context.Background(), jumpCloudRequest(id))
	if err != nil {
		t.Fatalf("CreateAccount(%s): %v", id, err)
	}
	b.grant(t, id, svcPrincipal)
	return resp.GetAccount()
}

func (b *broker) token(t testing.TB, id string) *credbrokerv1.GetTokenResponse {
	t.Helper()
	resp, err := b.tokens.GetToken(context.Background(), &credbrokerv1.GetTokenRequest{Name: "accounts/" + id})
	if err != nil {
		t.Fatalf("GetToken(%s): %v", id, err)
	}
	return resp
}

// wantCode checks an error's code and, if given, its ErrorInfo reason or the
// field its BadRequest names.
func wantCode(t *testing.T, err error, code codes.Code, reasonOrField string) *status.Status {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code {
		t.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), code)
	}
	if reasonOrField == "" {
		return st
	}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			if d.GetReason() == reasonOrField && d.GetDomain() == "credbroker" {
				return st
			}
		case *errdetails.BadRequest:
			if v := d.GetFieldViolations(); len(v) == 1 && v[0].GetField() == reasonOrField {
				return st
			}
		}
	}
	t.Fatalf("%v %q: no ErrorInfo reason or BadRequest field %q in %v", st.Code(), st.Message(), reasonOrField, st.Details())
	return nil
}

// startFailingAudit starts a broker whose audit writes fail with "disk
// full" while the returned flag is set.
func startFailingAudit(t testing.TB) (*broker, *atomic.Bool) {
	t.Helper()
	cfg, fake, logs := newConfig(t)
	fail := &atomic.Bool{}
	server.FailAuditWrites(&cfg, fail, errors.New("disk full"))
	return startWith(t, cfg, fake, logs), fail
}
