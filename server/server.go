// Package server is credbroker's gRPC server: configuration, start-up
// checks, wiring of the core packages, and the thin AccountService and
// TokenService handlers that validate requests, call the core and map
// errors to status codes (errors.go).
package server

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/ratelimit"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
)

// Config is the server's configuration. Zero fields take the values of
// DefaultConfig; cmd/credbroker documents the matching flags.
type Config struct {
	// ListenAddr is the gRPC address. Without TLS it must be a loopback
	// address. Port 0 picks a free port.
	ListenAddr string
	// TLSCertFile and TLSKeyFile (PEM) make the server speak TLS; required
	// unless ListenAddr is loopback.
	TLSCertFile, TLSKeyFile string
	// ClientCAFile is a PEM bundle of the CAs whose client certificates
	// prove a caller's principal (mTLS). It needs TLS. Without it, callers
	// prove themselves with caller keys only.
	ClientCAFile string
	// ProxyListenAddr is the egress proxy's HTTP address; it serves TLS
	// when the gRPC server does, with the same certificate and client CA,
	// and otherwise must be a loopback address. "off" disables the proxy.
	ProxyListenAddr string
	// ProxyMaxRequestBytes and ProxyMaxResponseBytes bound proxied bodies;
	// ProxyTimeout bounds the wait for an API's response headers.
	ProxyMaxRequestBytes, ProxyMaxResponseBytes int64
	ProxyTimeout                                time.Duration
	// OpsListenAddr serves /metrics (Prometheus), /healthz and /readyz. It
	// serves TLS when the gRPC server does, with the same certificate but
	// without asking for client certificates, and otherwise must be a
	// loopback address. "off" disables it.
	OpsListenAddr string
	// Tracing is TracingOff (the default) or TracingOTLP: OpenTelemetry
	// spans of gRPC calls and provider requests, sent with the OTLP
	// exporter configured by the standard OTEL_EXPORTER_OTLP_* variables.
	Tracing string
	// BootstrapAdminPrincipal: on the first start of a new database, make
	// this client-certificate principal (typed: a URI such as a SPIFFE ID,
	// "dns:<name>" or "cn:<text>") the admin, instead of creating an admin
	// caller key (see Server.BootstrapAdminKey).
	BootstrapAdminPrincipal string
	// RateLimit is each caller's sustained calls per second and RateBurst
	// the calls it may make at once; a negative RateLimit turns limiting off.
	RateLimit float64
	RateBurst int
	// UnauthenticatedRateLimit is the sustained calls per second that fail
	// authentication (no, unknown, revoked or expired credentials) which
	// each peer address may make, and UnauthenticatedRateBurst how many at
	// once. A peer beyond it gets RESOURCE_EXHAUSTED before its credentials
	// are looked at, valid ones too, until its budget refills. A negative
	// UnauthenticatedRateLimit turns this off.
	UnauthenticatedRateLimit float64
	UnauthenticatedRateBurst int
	// AuditMaxAge and AuditMaxEvents bound the audit trail: older events,
	// and the oldest beyond the count, are deleted.
	AuditMaxAge    time.Duration
	AuditMaxEvents int
	// Config is the data directory: DataDir, the master key (MasterKeyFile
	// or MasterKey), LockTimeout, and the Logger the whole broker logs to.
	datadir.Config

	// JumpCloud endpoints, overridable for tests and private deployments.
	JumpCloudTokenURLUS, JumpCloudTokenURLEU string
	JumpCloudAPIURLUS, JumpCloudAPIURLEU     string

	// UpstreamTimeout bounds every token request.
	UpstreamTimeout time.Duration
	// RefreshMargin, RefreshConcurrency, RetryBackoffMin, RetryBackoffMax
	// and RejectedRecheck tune the token manager (see tokens.Config).
	RefreshMargin                    time.Duration
	RefreshConcurrency               int
	RetryBackoffMin, RetryBackoffMax time.Duration
	RejectedRecheck                  time.Duration
	// MinTTLRefreshInterval: a caller's min_ttl forces at most one token
	// refresh per account per interval (more get RESOURCE_EXHAUSTED), and an
	// API's answer prompts at most one check of an API key per account per
	// interval.
	MinTTLRefreshInterval time.Duration
	// SecretExpiryWarning: accounts whose credentials expire within this
	// window show SECRET_EXPIRING and are warned about once a day.
	SecretExpiryWarning time.Duration
	// CompactInterval is how often the broker looks for deleted sealed
	// material (a deleted account's data key and secrets, a removed
	// secret) left in freed pages of the database file, and compacts the
	// file to remove it; it also does so on start and on shutdown.
	CompactInterval time.Duration
	// ShutdownTimeout is how long in-flight calls get to finish on shutdown.
	ShutdownTimeout time.Duration

	// wrapAuditSink lets tests make audit writes fail.
	wrapAuditSink func(audit.Sink) audit.Sink
	// refusalInterval (default refusalInterval) and auditPruneInterval
	// (default audit's) let tests shorten them.
	refusalInterval, auditPruneInterval time.Duration
}

// DefaultConfig is what the broker runs with when nothing is configured:
// loopback only, ./credbroker-data, JumpCloud's documented endpoints.
func DefaultConfig() Config {
	ep := provider.DefaultEndpoints()
	tc := tokens.DefaultConfig()
	ac := audit.DefaultConfig()
	return Config{
		ListenAddr:            "127.0.0.1:50051",
		ProxyListenAddr:       "127.0.0.1:50052",
		OpsListenAddr:         "127.0.0.1:50053",
		ProxyMaxRequestBytes:  proxy.DefaultMaxRequestBytes,
		ProxyMaxResponseBytes: proxy.DefaultMaxResponseBytes,
		ProxyTimeout:          proxy.DefaultTimeout,
		RateLimit:             100,
		RateBurst:             200,
		AuditMaxAge:           ac.MaxAge,
		AuditMaxEvents:        ac.MaxEvents,
		JumpCloudTokenURLUS:   ep.JumpCloudTokenURLUS,
		JumpCloudTokenURLEU:   ep.JumpCloudTokenURLEU,
		JumpCloudAPIURLUS:     ep.JumpCloudAPIURLUS,
		JumpCloudAPIURLEU:     ep.JumpCloudAPIURLEU,
		UpstreamTimeout:       provider.DefaultTimeout,
		RefreshMargin:         tc.RefreshMargin,
		RefreshConcurrency:    tc.RefreshConcurrency,
		RetryBackoffMin:       tc.BackoffMin,
		RetryBackoffMax:       tc.BackoffMax,
		RejectedRecheck:       tc.RejectedRecheck,
		SecretExpiryWarning:   tc.ExpiryWarning,
		CompactInterval:       time.Minute,
		MinTTLRefreshInterval: tc.ForcedInterval,
		ShutdownTimeout:       10 * time.Second,
		Tracing:               TracingOff,
		Config:                datadir.DefaultConfig(),

		// A client with a typo sees its UNAUTHENTICATED answers; a flood is throttled.
		UnauthenticatedRateLimit: 1,
		UnauthenticatedRateBurst: 20,
	}
}

func (c *Config) setDefaults() {
	d := DefaultConfig()
	fillUnset([][2]*string{
		{&c.ListenAddr, &d.ListenAddr}, {&c.ProxyListenAddr, &d.ProxyListenAddr},
		{&c.OpsListenAddr, &d.OpsListenAddr},
		{&c.JumpCloudTokenURLUS, &d.JumpCloudTokenURLUS}, {&c.JumpCloudTokenURLEU, &d.JumpCloudTokenURLEU},
		{&c.JumpCloudAPIURLUS, &d.JumpCloudAPIURLUS}, {&c.JumpCloudAPIURLEU, &d.JumpCloudAPIURLEU},
	})
	fillUnset([][2]*time.Duration{
		{&c.UpstreamTimeout, &d.UpstreamTimeout}, {&c.RefreshMargin, &d.RefreshMargin},
		{&c.RetryBackoffMin, &d.RetryBackoffMin}, {&c.RetryBackoffMax, &d.RetryBackoffMax},
		{&c.RejectedRecheck, &d.RejectedRecheck}, {&c.SecretExpiryWarning, &d.SecretExpiryWarning},
		{&c.ShutdownTimeout, &d.ShutdownTimeout}, {&c.CompactInterval, &d.CompactInterval},
		{&c.MinTTLRefreshInterval, &d.MinTTLRefreshInterval},
		{&c.AuditMaxAge, &d.AuditMaxAge}, {&c.ProxyTimeout, &d.ProxyTimeout},
	})
	fillUnset([][2]*int{
		{&c.RefreshConcurrency, &d.RefreshConcurrency}, {&c.RateBurst, &d.RateBurst}, {&c.AuditMaxEvents, &d.AuditMaxEvents},
		{&c.UnauthenticatedRateBurst, &d.UnauthenticatedRateBurst},
	})
	fillUnset([][2]*int64{
		{&c.ProxyMaxRequestBytes, &d.ProxyMaxRequestBytes}, {&c.ProxyMaxResponseBytes, &d.ProxyMaxResponseBytes},
	})
	if c.RateLimit == 0 {
		c.RateLimit = d.RateLimit
	}
	if c.UnauthenticatedRateLimit == 0 {
		c.UnauthenticatedRateLimit = d.UnauthenticatedRateLimit
	}
	c.Config = datadir.WithDefaults(c.Config)
}

// fillUnset sets each field (the first pointer) that is unset (empty, zero
// or negative) to its default (the second).
func fillUnset[T cmp.Ordered](fields [][2]*T) {
	var zero T
	for _, f := range fields {
		if *f[0] <= zero {
			*f[0] = *f[1]
		}
	}
}

// Server is a running credbroker. Create it with New and run it with Serve.
type Server struct {
	cfg          Config
	log          *slog.Logger
	store        *store.Store
	tokens       *tokens.Manager
	mirror       *storage.Mirror
	audit        *audit.Log
	grpc         *grpc.Server
	health       *health.Server
	listener     net.Listener
	bootstrapKey secret.String
	// proxy is the egress proxy and ops the metrics and health
	// endpoints; each is nil when it is off.
	proxy, ops *httpEndpoint
	tracing    *tracing // nil when off
	// draining: shutdown has begun, so /readyz says not ready.
	draining atomic.Bool
	refusals *refusals
}

// New checks the configuration, opens the data directory and the listener,
// and loads every account. A bad configuration fails before anything is
// written. It fails, touching nothing, if the master key is not the one the
// data directory was created with.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	tlsm, master, err := checkConfig(cfg)
	if err != nil {
		return nil, err
	}
	if p := cfg.BootstrapAdminPrincipal; p != "" {
		if problem := principalProblem(p, true); problem != "" {
			return nil, fmt.Errorf("--bootstrap-admin-principal: %s", problem)
		}
	}
	st, master, err := datadir.Open(cfg.Config, master)
	if err != nil {
		return nil, err
	}
	removeStagedBackups(cfg)
	s, err := build(cfg, st, master, tlsm)
	if err != nil {
		st.Close()
		return nil, err
	}
	return s, nil
}

// checkConfig checks everything in cfg that can be checked without
// writing, so that a bad configuration fails before New creates the data
// directory, a database or a master key. It returns the TLS material and
// the configured master key, nil if none is configured.
func checkConfig(cfg Config) (tlsMaterial, *keyring.MasterKey, error) {
	if err := checkTracingMode(cfg.Tracing); err != nil {
		return tlsMaterial{}, nil, err
	}
	if p := cfg.BootstrapAdminPrincipal; p != "" {
		if _, err := checkAdminPrincipal(p); err != nil {
			return tlsMaterial{}, nil, fmt.Errorf("--bootstrap-admin-principal %q: %s", p, status.Convert(err).Message())
		}
	}
	for flag, u := range map[string]string{
		"--jumpcloud-token-url-us": cfg.JumpCloudTokenURLUS, "--jumpcloud-token-url-eu": cfg.JumpCloudTokenURLEU,
		"--jumpcloud-api-url-us": cfg.JumpCloudAPIURLUS, "--jumpcloud-api-url-eu": cfg.JumpCloudAPIURLEU,
	} {
		if err := provider.CheckEndpointURL(u); err != nil {
			return tlsMaterial{}, nil, fmt.Errorf("%s %q: %w", flag, u, err)
		}
	}
	tlsm, err := loadTLS(cfg)
	if err != nil {
		return tlsMaterial{}, nil, err
	}
	master, err := datadir.ConfiguredMasterKey(cfg.Config)
	if err != nil {
		return tlsMaterial{}, nil, err
	}
	return tlsm, master, nil
}

func build(cfg Config, st *store.Store, master *keyring.MasterKey, tlsm tlsMaterial) (*Server, error) {
	mac, err := loadMACKey(st, master)
	if err != nil {
		return nil, err
	}
	keys := keyring.New(master, mac)
	tr, err := newTracing(cfg.Tracing)
	if err != nil {
		return nil, err
	}
	var tm *tokens.Manager
	met := metrics.New(func() []metrics.Account { return accountMetrics(tm, mac) })
	prov := provider.New(provider.Config{
		WrapTransport: tr.wrapTransport,
		Endpoints: provider.Endpoints{
			JumpCloudTokenURLUS: cfg.JumpCloudTokenURLUS, JumpCloudTokenURLEU: cfg.JumpCloudTokenURLEU,
			JumpCloudAPIURLUS: cfg.JumpCloudAPIURLUS, JumpCloudAPIURLEU: cfg.JumpCloudAPIURLEU,
		},
		Timeout:   cfg.UpstreamTimeout,
		OnRequest: met.UpstreamRequest,
	})
	tm = tokens.New(tokens.Config{
		RefreshMargin:      cfg.RefreshMargin,
		RefreshConcurrency: cfg.RefreshConcurrency,
		BackoffMin:         cfg.RetryBackoffMin,
		BackoffMax:         cfg.RetryBackoffMax,
		RejectedRecheck:    cfg.RejectedRecheck,
		ExpiryWarning:      cfg.SecretExpiryWarning,
		ForcedInterval:     cfg.MinTTLRefreshInterval,
		Fingerprint:        func(token string) string { return audit.Fingerprint(mac, token) },
		OnCacheLookup:      met.CacheLookup,
		Logger:             cfg.Logger,
	}, st, keys, prov)
	if err := typePrincipals(st); err != nil {
		return nil, fmt.Errorf("type the principals of grants and admin principals: %w", err)
	}
	all, err := st.All()
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	c := &copies{store: st, tokens: tm, grants: grants.NewIndex(), log: cfg.Logger}
	acc := accounts.New(st, keys, prov, tm, c.synced)
	if _, err = acc.MigrateSecrets(all, store.AuditEvent{Time: time.Now(), Principal: brokerPrincipal, Method: "migrate_secrets", Code: codeName(codes.OK)}); err != nil {
		return nil, fmt.Errorf("move stored secrets into the list of secrets: %w", err)
	}
	cs := callers.New(st, mac, time.Now, c.synced)
	c.callers = cs
	bootstrapKey, err := cs.Bootstrap(cfg.BootstrapAdminPrincipal, store.AuditEvent{Time: time.Now(), Principal: brokerPrincipal, Method: "bootstrap", Code: codeName(codes.OK)})
	if err != nil {
		return nil, fmt.Errorf("bootstrap the first admin: %w", err)
	}
	loaded, tampered, err := c.load()
	if err != nil {
		return nil, fmt.Errorf("load accounts and callers: %w", err)
	}
	if err := reportTampered(cfg.Logger, st, tampered); err != nil {
		return nil, err
	}
	c.mirror = storage.NewMirror(storage.MirrorConfig{
		Backend: st.Backend(),
		Load: func(context.Context) (storage.Revision, error) {
			rev, _, err := c.load()
			return rev, err
		},
		Apply:  c.apply,
		Logger: cfg.Logger,
	}, loaded)
	gi := c.grants
	var sink audit.Sink = st
	if cfg.wrapAuditSink != nil {
		sink = cfg.wrapAuditSink(sink)
	}
	al := audit.New(audit.Config{
		MaxAge: cfg.AuditMaxAge, MaxEvents: cfg.AuditMaxEvents, Expendable: callEvent,
		PruneInterval: cfg.auditPruneInterval, Logger: cfg.Logger,
	}, sink, st)
	lis, err := net.Listen("tcp", cfg.ListenAddr)
	if err != nil {
		return nil, err
	}

	errs := errorMapper{log: cfg.Logger}
	refused := newRefusals(cfg.UnauthenticatedRateLimit, cfg.UnauthenticatedRateBurst, cfg.refusalInterval, al, cfg.Logger, time.Now)
	gate := &gate{callers: cs, limiter: ratelimit.New(cfg.RateLimit, cfg.RateBurst), audit: al, log: cfg.Logger, now: time.Now, refusals: refused}
	// Panics are recovered inside the gate, so that their calls are
	// audited, and outside it, so that the gate itself cannot crash a call.
	onPanic := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		cfg.Logger.Error("panic in handler", "method", methodName(ctx))
		return status.Error(codes.Internal, "internal error")
	})
	recoverPanics, recoverStreamPanics := recovery.UnaryServerInterceptor(onPanic), recovery.StreamServerInterceptor(onPanic)
	g := grpc.NewServer(append(tr.serverOptions(),
		grpc.Creds(tlsm.grpcCredentials()),
		grpc.ChainUnaryInterceptor(met.GRPC.UnaryServerInterceptor(), recoverPanics, gate.unary, recoverPanics),
		grpc.ChainStreamInterceptor(met.GRPC.StreamServerInterceptor(), recoverStreamPanics, gate.stream, recoverStreamPanics),
	)...)
	credbrokerv1.RegisterAccountServiceServer(g, &accountService{accounts: acc, callers: cs, errs: errs})
	credbrokerv1.RegisterTokenServiceServer(g, &tokenService{tokens: tm, grants: gi, errs: errs, metrics: met})
	credbrokerv1.RegisterCallerServiceServer(g, &callerService{callers: cs, errs: errs})
	credbrokerv1.RegisterAuditServiceServer(g, &auditService{audit: al, errs: errs})
	credbrokerv1.RegisterBackupServiceServer(g, &backupService{store: st, dir: cfg.DataDir, audit: al, errs: errs})
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	met.GRPC.InitializeMetrics(g)

	s := &Server{cfg: cfg, log: cfg.Logger, store: st, tokens: tm, mirror: c.mirror, audit: al, grpc: g, health: hs, listener: lis, bootstrapKey: bootstrapKey, tracing: tr, refusals: refused}
	if cfg.ProxyListenAddr != listenerOff {
		fwd := proxy.New(proxy.Config{
			MaxRequestBytes: cfg.ProxyMaxRequestBytes, MaxResponseBytes: cfg.ProxyMaxResponseBytes,
			Timeout: cfg.ProxyTimeout, Logger: cfg.Logger,
		}, tm)
		if s.proxy, err = newProxyServer(cfg, tlsm, &proxyHandler{
			gate: gate, certs: mtls.NewHTTPVerifier(tlsm.clientCAs), grants: gi, fwd: fwd, errs: errs,
		}); err != nil {
			lis.Close()
			return nil, err
		}
	}
	if cfg.OpsListenAddr != listenerOff {
		if s.ops, err = listenHTTP("ops listener", cfg.OpsListenAddr, newOpsServer(cfg, tlsm, met, al, &s.draining)); err != nil {
			lis.Close()
			if s.proxy != nil {
				s.proxy.lis.Close()
			}
			return nil, err
		}
	}
	return s, nil
}

// callEvent says whether an audit event records a call that callers can
// make at volume (GetToken, a proxied call, a tally of refused calls, any
// refused or failed call): only those give way when the trail is over
// --audit-max-events, so that admin changes and the broker's own events
// go by age alone.
func callEvent(ev store.AuditEvent) bool {
	switch {
	case ev.Principal == brokerPrincipal:
		return false
	case ev.Method == credbrokerv1.TokenService_GetToken_FullMethodName, ev.Method == proxyMethod,
		ev.Method == refusalMethod, ev.Method == deniedMethod:
		return true
	}
	return ev.Code != codeName(codes.OK)
}

// reportTampered logs and audits, at each start, every stored record that
// failed its integrity check and so is not used.
func reportTampered(log *slog.Logger, st *store.Store, names []string) error {
	var events []store.AuditEvent
	for _, name := range names {
		log.Error("a stored record failed its integrity check (it was changed outside the broker, or copied from another database); it is not used", "resource", name)
		events = append(events, store.AuditEvent{
			Time: time.Now(), Principal: brokerPrincipal, Method: store.TamperedEvent, Resource: name, Code: codeName(codes.DataLoss),
			Detail: "the stored record failed its integrity check, so it is not used",
		})
	}
	if len(events) == 0 {
		return nil
	}
	return st.AppendAudit(events)
}

// listenerOff as a listen address disables the egress proxy or the ops listener.
const listenerOff = "off"

// newProxyServer listens for the egress proxy.
func newProxyServer(cfg Config, tlsm tlsMaterial, h *proxyHandler) (*httpEndpoint, error) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       5 * time.Minute, // a whole request, body included: no slow-drip uploads
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       h.certs.ConnContext,
		ErrorLog:          slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn),
	}
	if tlsm.cert != nil {
		srv.TLSConfig = mtls.ServerTLSConfig(*tlsm.cert, tlsm.clientCAs != nil)
	}
	return listenHTTP("egress proxy", cfg.ProxyListenAddr, srv)
}

// brokerPrincipal is the principal of the broker's own actions in the audit trail.
const brokerPrincipal = audit.BrokerPrincipal

// BootstrapAdminKey is the admin caller key created on the first start of a
// new database, or empty. It is not logged: show it to the operator once.
func (s *Server) BootstrapAdminKey() string { return s.bootstrapKey.Reveal() }

// tlsMaterial is what the server's listeners serve: a certificate (nil for
// plaintext) and the CAs of accepted client certificates (nil for none).
type tlsMaterial struct {
	cert      *tls.Certificate
	clientCAs *x509.CertPool
}

// loadTLS checks the listen addresses, serving plaintext on loopback ones
// only, and reads the TLS files.
func loadTLS(cfg Config) (tlsMaterial, error) {
	plaintext := cfg.TLSCertFile == "" && cfg.TLSKeyFile == ""
	if plaintext && cfg.ClientCAFile != "" {
		return tlsMaterial{}, errors.New("a client CA (mTLS) needs TLS: set --tls-cert and --tls-key too")
	}
	for _, l := range [][2]string{{"--listen", cfg.ListenAddr}, {"--proxy-listen", cfg.ProxyListenAddr}, {"--ops-listen", cfg.OpsListenAddr}} {
		if l[1] == listenerOff && l[0] != "--listen" {
			continue
		}
		if err := checkListenAddr(l[0], l[1], plaintext); err != nil {
			return tlsMaterial{}, err
		}
	}
	if plaintext {
		return tlsMaterial{}, nil
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
	if err != nil {
		return tlsMaterial{}, fmt.Errorf("TLS certificate and key: %w", err)
	}
	if cfg.ClientCAFile == "" {
		return tlsMaterial{cert: &cert}, nil
	}
	pem, err := os.ReadFile(cfg.ClientCAFile)
	if err != nil {
		return tlsMaterial{}, fmt.Errorf("client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return tlsMaterial{}, fmt.Errorf("client CA %s holds no PEM certificate", cfg.ClientCAFile)
	}
	return tlsMaterial{cert: &cert, clientCAs: pool}, nil
}

// grpcCredentials is TLS (with client-certificate principals when a client
// CA is configured), or plaintext.
func (t tlsMaterial) grpcCredentials() credentials.TransportCredentials {
	if t.cert == nil {
		return insecure.NewCredentials()
	}
	return mtls.ServerCredentials(*t.cert, t.clientCAs)
}

// loadMACKey opens the stored MAC key, making one if the store has none.
func loadMACKey(st *store.Store, master *keyring.MasterKey) (*keyring.MACKey, error) {
	wrapped, err := st.WrappedMACKey()
	if err != nil {
		return nil, err
	}
	if wrapped != nil {
		return master.UnwrapMACKey(wrapped)
	}
	mac, wrapped, err := master.NewMACKey()
	if err != nil {
		return nil, err
	}
	return mac, st.SetWrappedMACKey(wrapped)
}

func methodName(ctx context.Context) string {
	m, _ := grpc.Method(ctx)
	return m
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// ProxyAddr is the egress proxy's address; nil when the proxy is off.
func (s *Server) ProxyAddr() net.Addr { return s.proxy.addr() }

// OpsAddr is the ops listener's address; nil when it is off.
func (s *Server) OpsAddr() net.Addr { return s.ops.addr() }

// Serve answers calls and refreshes tokens until ctx ends, then shuts down
// gracefully: in-flight calls get ShutdownTimeout to finish, the refresher
// stops, and the database is closed.
func (s *Server) Serve(ctx context.Context) error {
	mirrorCtx, stopMirror := context.WithCancel(context.Background())
	mirrorDone := make(chan struct{})
	go func() { s.mirror.Run(mirrorCtx); close(mirrorDone) }()
	refreshCtx, stopRefresh := context.WithCancel(context.Background())
	refreshDone := make(chan struct{})
	go func() { s.tokens.Run(refreshCtx); close(refreshDone) }()
	auditCtx, stopAudit := context.WithCancel(context.Background())
	auditDone := make(chan struct{})
	go func() { s.audit.Run(auditCtx); close(auditDone) }()
	compactCtx, stopCompact := context.WithCancel(context.Background())
	compactDone := make(chan struct{})
	go func() { s.compactPeriodically(compactCtx); close(compactDone) }()
	refusalsCtx, stopRefusals := context.WithCancel(context.Background())
	refusalsDone := make(chan struct{})
	go func() { s.refusals.run(refusalsCtx); close(refusalsDone) }()

	serveErr := make(chan error, 3)
	go func() { serveErr <- s.grpc.Serve(s.listener) }()
	for _, h := range []*httpEndpoint{s.proxy, s.ops} {
		if h != nil {
			go func() { serveErr <- h.serve() }()
			s.log.Info(h.name+" listening", "addr", h.addr().String())
		}
	}
	s.log.Info("credbroker listening", "addr", s.Addr().String(), "data_dir", s.cfg.DataDir, "auth", s.authSummary())
	if s.cfg.TLSCertFile == "" {
		s.log.Warn("serving PLAINTEXT on a loopback address: caller keys cross the connection unencrypted. Anything beyond one host needs --tls-cert and --tls-key")
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
	}
	s.log.Info("shutting down")
	s.draining.Store(true)
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	proxyStopped := s.proxy.shutdown(s.cfg.ShutdownTimeout)
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("in-flight calls did not finish in time; closing them", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
	}
	<-proxyStopped
	<-s.ops.shutdown(s.cfg.ShutdownTimeout) // answering "not ready" until the end
	// Calls have finished: the last refusals are tallied, and written
	// while the audit writer still runs; then no one waits for it any more.
	stopRefusals()
	<-refusalsDone
	stopAudit()
	<-auditDone
	stopRefresh()
	<-refreshDone
	stopCompact()
	<-compactDone
	stopMirror()
	<-mirrorDone
	if cerr := datadir.CompactIfPending(s.store); cerr != nil { // nothing writes any more
		s.log.Error("could not compact the database; deleted secrets stay in its freed pages until the next start", "error", cerr)
	}
	s.tracing.shutdown(s.cfg.ShutdownTimeout)
	if cerr := s.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	s.log.Info("stopped")
	return err
}

// compactPeriodically compacts the database every CompactInterval when a
// deletion left sealed material in its freed pages, until ctx ends.
func (s *Server) compactPeriodically(ctx context.Context) {
	tick := time.NewTicker(s.cfg.CompactInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if err := datadir.CompactIfPending(s.store); err != nil {
			s.log.Error("could not compact the database; deleted secrets stay in its freed pages until it does", "error", err)
		}
	}
}

// authSummary says at start-up how callers prove who they are.
func (s *Server) authSummary() string {
	switch {
	case s.cfg.ClientCAFile != "":
		return "TLS; client certificates signed by " + s.cfg.ClientCAFile + ", or caller keys"
	case s.cfg.TLSCertFile != "":
		return "TLS; caller keys"
	}
	return "plaintext on loopback; caller keys"
}

// checkListenAddr checks a listen address's form and, for plaintext,
// refuses any address that is not loopback: caller keys and tokens would
// cross the network readable by anyone on the path. flag names the address
// in the error.
func checkListenAddr(flag, addr string, plaintext bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s %q: %w", flag, addr, err)
	}
	if !plaintext || host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%s %q is not a loopback address, so it requires TLS: set --tls-cert and --tls-key (plaintext is served only on 127.0.0.1, ::1 or localhost)", flag, addr)
}
