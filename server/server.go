// Package server is credbroker's server: its configuration, start-up
// checks, and the wiring that builds the core packages and connects them
// to the gate (internal/gate), the handlers (internal/api, internal/ops)
// and the listeners (internal/listeners); then it serves until shut down,
// and Close releases what New acquired.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/internal/loopback"
	"github.com/credbroker/credbroker/internal/version"
	"github.com/credbroker/credbroker/server/datadir"
	"github.com/credbroker/credbroker/server/internal/accounts"
	"github.com/credbroker/credbroker/server/internal/api"
	"github.com/credbroker/credbroker/server/internal/audit"
	"github.com/credbroker/credbroker/server/internal/callers"
	"github.com/credbroker/credbroker/server/internal/connect"
	"github.com/credbroker/credbroker/server/internal/events"
	"github.com/credbroker/credbroker/server/internal/gate"
	"github.com/credbroker/credbroker/server/internal/grants"
	"github.com/credbroker/credbroker/server/internal/hub"
	"github.com/credbroker/credbroker/server/internal/keyring"
	"github.com/credbroker/credbroker/server/internal/listeners"
	"github.com/credbroker/credbroker/server/internal/metrics"
	"github.com/credbroker/credbroker/server/internal/mtls"
	"github.com/credbroker/credbroker/server/internal/ops"
	"github.com/credbroker/credbroker/server/internal/provider"
	"github.com/credbroker/credbroker/server/internal/proxy"
	"github.com/credbroker/credbroker/server/internal/secret"
	"github.com/credbroker/credbroker/server/internal/signin"
	"github.com/credbroker/credbroker/server/internal/storage"
	"github.com/credbroker/credbroker/server/internal/store"
	"github.com/credbroker/credbroker/server/internal/tokens"
	"github.com/credbroker/credbroker/server/internal/tracing"
	"github.com/credbroker/credbroker/server/internal/webhooks"
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
	// OpsListenAddr serves /metrics (Prometheus), /healthz and /readyz. It
	// serves TLS when the gRPC server does, with the same certificate but
	// without asking for client certificates, and otherwise must be a
	// loopback address. "off" disables it.
	OpsListenAddr string
	// Profiling serves Go's profiles (net/http/pprof: CPU, heap,
	// goroutines, mutex and block contention, execution traces) under
	// /debug/pprof/ on the ops listener, which must then be a loopback
	// address: profiles ask for no credentials and show the code's hot
	// paths, never memory's contents.
	Profiling bool
	// HubListenAddr serves the Hub, the admins' web pages. It serves TLS
	// when the gRPC server does, with the same certificate, and otherwise
	// must be a loopback address. "off" disables it.
	HubListenAddr string
	// PublicURL is the Hub's address as browsers reach it (through a load
	// balancer, say): connect links are built on it. Default: the Hub's
	// own address.
	PublicURL string
	// Tracing is TracingOff (the default) or TracingOTLP: OpenTelemetry
	// spans of gRPC calls and provider requests, sent with the OTLP
	// exporter configured by the standard OTEL_EXPORTER_OTLP_* variables.
	Tracing string
	// BootstrapAdminPrincipal: on the first start of a new database, make
	// this client-certificate principal (typed: a URI such as a SPIFFE ID,
	// "dns:<name>" or "cn:<text>") the admin, instead of creating an admin
	// caller key (see Server.BootstrapAdminKey).
	BootstrapAdminPrincipal string
	// BootstrapAdminKey: on the first start of a new database, make this
	// key (one the operator made, shaped as the broker's) the admin caller
	// key, instead of a new one that Server.BootstrapAdminKey shows once.
	BootstrapAdminKey string
	// CompactInterval is how often the broker looks for deleted sealed
	// material (a deleted account's data key and secrets, a removed
	// secret) left in freed pages of the database file, and compacts the
	// file to remove it; it also does so on start and on shutdown.
	CompactInterval time.Duration
	// ShutdownTimeout is how long in-flight calls get to finish on shutdown.
	ShutdownTimeout time.Duration

	// Config is the data directory: DataDir, the master key (MasterKeyFile
	// or MasterKey), LockTimeout, and the Logger the whole broker logs to.
	datadir.Config
	// The configurations of the parts the server wires, each documented in
	// its package. The wiring gives each part the Logger above and sets
	// their hooks itself: tokens' Fingerprint and OnCacheLookup, audit's
	// Expendable, the provider's OnRequest and WrapTransport.
	Gate     gate.Config     // callers' rate limits, and of calls without valid credentials
	Tokens   tokens.Config   // the token cache, refresher and account health
	Audit    audit.Config    // the audit trail's retention
	Proxy    proxy.Config    // the egress proxy's bounds
	Provider provider.Config // JumpCloud's endpoints and the token requests' timeout
	Hub      hub.Config      // the Hub's sessions
	Events   events.Config   // how long credential events are kept
	Webhooks webhooks.Config // webhook deliveries' timeout, retries and address rules

	// wrapAuditSink lets tests make audit writes fail.
	wrapAuditSink func(audit.Sink) audit.Sink
}

// TracingOTLP turns tracing on (Config.Tracing); anything else but
// TracingOff is refused.
const (
	TracingOff  = tracing.Off
	TracingOTLP = tracing.OTLP
)

// DefaultConfig is what the broker runs with when nothing is configured:
// loopback only, ./credbroker-data, JumpCloud's documented endpoints, and
// each part's DefaultConfig.
func DefaultConfig() Config {
	return Config{
		ListenAddr:      "127.0.0.1:50051",
		ProxyListenAddr: "127.0.0.1:50052",
		OpsListenAddr:   "127.0.0.1:50053",
		HubListenAddr:   "127.0.0.1:50054",
		Tracing:         TracingOff,
		CompactInterval: time.Minute,
		ShutdownTimeout: 10 * time.Second,
		Config:          datadir.DefaultConfig(),
		Gate:            gate.DefaultConfig(),
		Tokens:          tokens.DefaultConfig(),
		Audit:           audit.DefaultConfig(),
		Proxy:           proxy.DefaultConfig(),
		Provider:        provider.DefaultConfig(),
		Hub:             hub.DefaultConfig(),
		Events:          events.Config{Retention: events.DefaultRetention},
		Webhooks:        webhooks.DefaultConfig(),
	}
}

// setDefaults fills the server's own unset fields, the data directory's
// and the provider's endpoints, which are checked before anything is
// built; each other part fills its own when it is built.
func (c *Config) setDefaults() {
	d := DefaultConfig()
	for _, f := range [][2]*string{{&c.ListenAddr, &d.ListenAddr}, {&c.ProxyListenAddr, &d.ProxyListenAddr}, {&c.OpsListenAddr, &d.OpsListenAddr}, {&c.HubListenAddr, &d.HubListenAddr}} {
		if *f[0] == "" {
			*f[0] = *f[1]
		}
	}
	for _, f := range [][2]*time.Duration{{&c.CompactInterval, &d.CompactInterval}, {&c.ShutdownTimeout, &d.ShutdownTimeout}} {
		if *f[0] <= 0 {
			*f[0] = *f[1]
		}
	}
	c.Config = datadir.WithDefaults(c.Config)
	c.Provider.Endpoints = c.Provider.Endpoints.WithDefaults()
}

// Server is a running credbroker. Create it with New, run it with Serve,
// and release it with Close.
type Server struct {
	cfg          Config
	log          *slog.Logger
	store        *store.Store
	tokens       *tokens.Manager
	mirror       *storage.Mirror
	audit        *audit.Log
	journal      *audit.JournalSink // nil on etcd
	gate         *gate.Gate
	grpc         *grpc.Server
	health       *health.Server
	listener     net.Listener
	bootstrapKey secret.String
	// hub is the Hub's listener; nil when it is off.
	hub *listeners.HTTP
	// links are the connect links, opened in the Hub.
	links *connect.Service
	// events relays the credential events; webhooks delivers them.
	events   *events.Service
	webhooks *webhooks.Service
	// proxy is the egress proxy and ops the metrics and health
	// endpoints; each is nil when it is off.
	proxy, ops *listeners.HTTP
	// draining: shutdown has begun, so /readyz says not ready.
	draining atomic.Bool
	// probe watches the storage of a replica on etcd; nil on bbolt.
	probe *storageProbe

	// release undoes New: it closes the listeners, stops tracing and
	// closes the database, once (closeOnce; closeErr is what it returned).
	release   cleanup
	closeOnce sync.Once
	closeErr  error
	// mu guards started (Serve or Close was called), stopServing (ends
	// Serve's context) and served (closed when Serve has returned).
	mu          sync.Mutex
	started     bool
	stopServing context.CancelFunc
	served      chan struct{}
}

// cleanup is a stack of releases: run, it calls them last first.
type cleanup []func() error

func (c *cleanup) push(release func() error) { *c = append(*c, release) }

func (c cleanup) run() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i]())
	}
	return errors.Join(errs...)
}

// New checks the configuration, opens the data directory and the
// listeners, and loads every account. A bad configuration fails before
// anything is written. It fails, touching nothing, if the master key is not
// the one the data directory was created with. Whenever it fails, it has
// released all it had acquired.
func New(cfg Config) (_ *Server, err error) {
	cfg.setDefaults()
	tlsm, masters, err := checkConfig(cfg)
	if err != nil {
		return nil, &ConfigError{err}
	}
	var release cleanup
	defer func() {
		if err != nil {
			_ = release.run() // err says why New failed
		}
	}()
	// The addresses first: one in use fails the start before anything is
	// created or an admin key shown.
	socks, err := bind(cfg, &release)
	if err != nil {
		return nil, err
	}
	st, masters, err := datadir.Open(cfg.Config, masters)
	if err != nil {
		return nil, err
	}
	release.push(st.Close)
	api.RemoveStagedBackups(cfg.DataDir, cfg.Logger)
	return build(cfg, st, masters, tlsm, socks, &release)
}

// sockets are the broker's listening sockets; nil for a listener that is off.
type sockets struct{ grpc, proxy, ops, hub net.Listener }

// bind opens every listener's socket, each closed by release.
func bind(cfg Config, release *cleanup) (sockets, error) {
	var s sockets
	for _, l := range []struct {
		flag, addr string
		lis        *net.Listener
	}{
		{"listen", cfg.ListenAddr, &s.grpc},
		{"proxy-listen", cfg.ProxyListenAddr, &s.proxy},
		{"ops-listen", cfg.OpsListenAddr, &s.ops},
		{"hub-listen", cfg.HubListenAddr, &s.hub},
	} {
		if l.addr == listeners.Off {
			continue
		}
		lis, err := listeners.Bind(l.flag, l.addr)
		if err != nil {
			return s, err
		}
		*l.lis = lis
		release.push(func() error { return listeners.Close(lis) })
	}
	return s, nil
}

// ConfigError is a configuration New refused before it made or opened
// anything: a flag's value to change.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// checkConfig checks everything in cfg that can be checked without
// writing, so that a bad configuration fails before New creates the data
// directory, a database or a master key. It returns the TLS material and
// the configured master keys, nil if none is configured.
func checkConfig(cfg Config) (listeners.TLS, *keyring.Masters, error) {
	if err := tracing.CheckMode(cfg.Tracing); err != nil {
		return listeners.TLS{}, nil, err
	}
	if p := cfg.BootstrapAdminPrincipal; p != "" {
		if _, err := api.CheckAdminPrincipal(p); err != nil {
			return listeners.TLS{}, nil, fmt.Errorf("--bootstrap-admin-principal %q: %s", p, status.Convert(err).Message())
		}
		if cfg.BootstrapAdminKey != "" {
			return listeners.TLS{}, nil, errors.New("--bootstrap-admin-principal and --bootstrap-admin-key-file both name the first admin: set one")
		}
		if cfg.ClientCAFile == "" {
			return listeners.TLS{}, nil, errors.New("--bootstrap-admin-principal needs --client-ca: without client certificates, no one can act as that principal")
		}
	}
	if k := cfg.BootstrapAdminKey; k != "" {
		if err := callers.CheckKeyFormat(k); err != nil {
			return listeners.TLS{}, nil, fmt.Errorf("--bootstrap-admin-key-file: %w", err)
		}
	}
	ep := cfg.Provider.Endpoints
	for flag, u := range map[string]string{
		"--jumpcloud-token-url-us": ep.JumpCloudTokenURLUS, "--jumpcloud-token-url-eu": ep.JumpCloudTokenURLEU,
		"--jumpcloud-api-url-us": ep.JumpCloudAPIURLUS, "--jumpcloud-api-url-eu": ep.JumpCloudAPIURLEU,
		"--jumpcloud-token-url-in": ep.JumpCloudTokenURLIN, "--jumpcloud-api-url-in": ep.JumpCloudAPIURLIN,
	} {
		if u == "" && flag == "--jumpcloud-token-url-in" {
			continue // unverified, so unset unless configured
		}
		if err := provider.CheckEndpointURL(u); err != nil {
			return listeners.TLS{}, nil, fmt.Errorf("%s %q: %w", flag, u, err)
		}
	}
	tlsm, err := listeners.LoadTLS(cfg.TLSCertFile, cfg.TLSKeyFile, cfg.ClientCAFile,
		listeners.Addr{Flag: "--listen", Addr: cfg.ListenAddr},
		listeners.Addr{Flag: "--proxy-listen", Addr: cfg.ProxyListenAddr, Optional: true},
		listeners.Addr{Flag: "--ops-listen", Addr: cfg.OpsListenAddr, Optional: true},
		listeners.Addr{Flag: "--hub-listen", Addr: cfg.HubListenAddr, Optional: true})
	if err != nil {
		return listeners.TLS{}, nil, err
	}
	if err := checkPublicURL(cfg.PublicURL); err != nil {
		return listeners.TLS{}, nil, err
	}
	if cfg.Profiling && !loopback.Addr(cfg.OpsListenAddr) {
		return listeners.TLS{}, nil, fmt.Errorf("--pprof needs --ops-listen on a loopback address (it is %q): profiles ask for no credentials; reach them through an SSH tunnel or kubectl port-forward", cfg.OpsListenAddr)
	}
	if err := hub.CheckConfig(cfg.Hub); err != nil {
		return listeners.TLS{}, nil, err
	}
	masters, err := datadir.ConfiguredMasters(cfg.Config)
	if err == nil {
		err = datadir.CheckStorage(cfg.Config, masters)
	}
	return tlsm, masters, err
}

// streamWorkers is how many calls run at once on kept goroutines; calls
// beyond them start goroutines of their own, as without workers.
const streamWorkers = 256

// build builds the parts on the open store st and connects them; it pushes
// what it acquires onto release.
func build(cfg Config, st *store.Store, masters *keyring.Masters, tlsm listeners.TLS, socks sockets, release *cleanup) (*Server, error) {
	mac, err := datadir.MACKey(st, masters)
	if err != nil {
		return nil, err
	}
	keys := keyring.New(masters, mac)
	tr, err := tracing.New(cfg.Tracing)
	if err != nil {
		return nil, err
	}
	release.push(func() error { tr.Shutdown(cfg.ShutdownTimeout); return nil })
	var tm *tokens.Manager
	met := metrics.New(func() []metrics.Account { return ops.Accounts(tm, mac) })
	pc := cfg.Provider
	pc.WrapTransport, pc.OnRequest = tr.WrapTransport, met.UpstreamRequest
	prov := provider.New(pc)
	tc := cfg.Tokens
	tc.Fingerprint = func(token string) string { return audit.Fingerprint(mac, token) }
	tc.OnCacheLookup, tc.Logger = met.CacheLookup, cfg.Logger
	tm = tokens.New(tc, st, keys, prov)
	// Every account is read once, here: the copies follow the changes
	// from this revision on, the migration's and the bootstrap's too.
	loaded, err := st.Revision()
	if err == nil {
		// A rotation committed since the key was checked would not reach
		// the copies, which follow the changes after loaded.
		err = st.RefreshKeyCheck()
	}
	if err != nil {
		return nil, err
	}
	all, err := st.All()
	if err != nil {
		return nil, fmt.Errorf("load accounts: %w", err)
	}
	ec := cfg.Events
	ec.Logger = cfg.Logger
	evs := events.New(ec, st)
	c := &copies{store: st, tokens: tm, grants: grants.NewIndex(), events: evs, log: cfg.Logger}
	acc := accounts.New(st, keys, prov, tm, c.synced)
	if all, err = acc.MigrateSecrets(all, audit.Own(time.Now(), "migrate_secrets", "", "")); err != nil {
		return nil, fmt.Errorf("move stored secrets into the list of secrets: %w", err)
	}
	cs := callers.New(st, mac, time.Now, c.synced)
	c.callers = cs
	cs.AdminPrincipalsProve(cfg.ClientCAFile != "")
	bootstrapKey, err := bootstrap(cfg, st, cs)
	if err != nil {
		return nil, err
	}
	tampered, err := c.fill(all)
	if err != nil {
		return nil, fmt.Errorf("load callers: %w", err)
	}
	if err := datadir.ReportTampered(cfg.Logger, st, tampered); err != nil {
		return nil, err
	}
	mc := storage.MirrorConfig{
		Backend: st.Backend(),
		Load:    func(context.Context) (storage.Revision, error) { return c.load() },
		Apply:   c.apply,
		Logger:  cfg.Logger,
	}
	if cfg.Storage == datadir.StorageEtcd {
		// Other replicas change keys and grants: a replica whose copies
		// may be further behind than this refuses calls (see unavailable).
		mc.MaxLag = maxLag
	}
	c.mirror = storage.NewMirror(mc, loaded)
	var sink audit.Sink = st
	var journal *audit.JournalSink // on bbolt: see audit.JournalSink
	if cfg.Storage != datadir.StorageEtcd {
		journal, err = audit.OpenJournal(filepath.Join(cfg.DataDir, datadir.AuditJournalDir), mac, st, cfg.Audit.JournalSegmentSize, cfg.Logger)
		if err != nil {
			return nil, err
		}
		release.push(journal.Close)
		sink = journal
	}
	if cfg.wrapAuditSink != nil {
		sink = cfg.wrapAuditSink(sink)
	}
	ac := cfg.Audit
	ac.Expendable, ac.Logger = api.CallEvent, cfg.Logger
	if journal != nil {
		ac.Flush = journal.Flush
	}
	al := audit.New(ac, sink, st)

	hs := health.NewServer()
	var probe *storageProbe // only a replica on etcd can lose its storage
	if cfg.Storage == datadir.StorageEtcd {
		probe = &storageProbe{backend: st.Backend(), health: hs, log: cfg.Logger}
	}
	certs := mtls.NewHTTPVerifier(tlsm.ClientCAs)
	gc := cfg.Gate
	gc.Logger, gc.Unavailable = cfg.Logger, func() error { return unavailable(probe, c.mirror, st) }
	gt := gate.New(gc, cs, al, certs)
	g := grpc.NewServer(append(tr.ServerOptions(),
		grpc.Creds(tlsm.GRPCCredentials()),
		grpc.ChainUnaryInterceptor(append([]grpc.UnaryServerInterceptor{met.GRPC.UnaryServerInterceptor()}, gt.UnaryInterceptors()...)...),
		grpc.ChainStreamInterceptor(append([]grpc.StreamServerInterceptor{met.GRPC.StreamServerInterceptor()}, gt.StreamInterceptors()...)...),
		// Calls run on goroutines kept from call to call, whose stacks
		// have grown already: on a new goroutine a call's log line alone
		// grew the stack, copied, every time (a tenth of a GetToken's CPU).
		grpc.NumStreamWorkers(streamWorkers),
	)...)
	now := cfg.Hub.Now // the Hub's clock, where links are opened
	if now == nil {
		now = time.Now
	}
	links := connect.New(st, keys, mac, now, cfg.Logger)
	wc := cfg.Webhooks
	wc.Encode, wc.OnAttempt, wc.Logger = api.EventJSON, met.WebhookAttempt, cfg.Logger
	hooks := webhooks.New(wc, st, mac, evs)
	s := &Server{cfg: cfg, log: cfg.Logger, store: st, tokens: tm, mirror: c.mirror, audit: al, journal: journal, gate: gt, grpc: g, health: hs, probe: probe, bootstrapKey: bootstrapKey, links: links, events: evs, webhooks: hooks}
	dbID, err := st.DatabaseID()
	if err != nil {
		return nil, err
	}
	core := api.Core{
		Accounts: acc, Callers: cs, Tokens: tm, Grants: c.grants, Audit: al, Metrics: met,
		Store: st, DataDir: cfg.DataDir, MasterKey: masters.All()[0], Logger: cfg.Logger,
		Links: links, HubURL: s.hubURL, Events: evs, EventLogID: api.EventLogID(dbID), Webhooks: hooks,
	}
	services := api.NewServices(core)
	services.Register(g)
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)
	met.GRPC.InitializeMetrics(g)

	s.listener = socks.grpc
	if socks.proxy != nil {
		xc := cfg.Proxy
		xc.Logger = cfg.Logger
		s.proxy = tlsm.NewHTTP("egress proxy", socks.proxy, api.ProxyHandler(core, gt, proxy.New(xc, tm)),
			listeners.HTTPOptions{ReadTimeout: 5 * time.Minute, MaxHeaderBytes: 64 << 10, Certs: certs}, cfg.Logger)
	}
	if socks.ops != nil {
		s.ops = tlsm.NewHTTP("ops listener", socks.ops, ops.Handler(met, s.notReady, cfg.Profiling),
			listeners.HTTPOptions{ReadTimeout: 30 * time.Second}, cfg.Logger)
	}
	if socks.hub != nil {
		hc := cfg.Hub
		hc.Logger, hc.ExpiryWarning = cfg.Logger, cfg.Tokens.ExpiryWarning
		s.hub = tlsm.NewHTTP("hub", socks.hub, hub.New(hc, hub.Parts{
			Gate: gt, API: services, Links: links, SignIn: signin.New(st, keys, mac, prov, acc, now), Store: st, MAC: mac, URL: s.hubURL,
		}, cfg.TLSCertFile != ""),
			listeners.HTTPOptions{ReadTimeout: 30 * time.Second, MaxHeaderBytes: 64 << 10, Certs: certs}, cfg.Logger)
	}
	s.release = *release
	return s, nil
}

// maxLag bounds how far behind etcd a replica's copies of keys and grants
// may be while it serves: a key revoked on one replica is refused on
// every other within it.
const maxLag = time.Second

// unavailable is why the replica must refuse calls, or nil: it cannot
// reach an etcd quorum, its copies may lag behind etcd (a paused process,
// a slow member), or another replica moved the database to a master key
// it does not hold.
func unavailable(probe *storageProbe, mirror *storage.Mirror, st *store.Store) error {
	switch {
	case probe.Down() || mirror.Lagging():
		return gate.ErrStorageUnavailable
	case st.KeyMissing():
		return gate.ErrMasterKeyMissing
	}
	return nil
}

// notReady is why the server should not get calls now, or "".
func (s *Server) notReady() string {
	switch {
	case s.draining.Load():
		return "shutting down"
	case s.probe.Down():
		return "the storage (a quorum of etcd) is out of reach, so calls are refused; see the server log"
	case s.mirror.Lagging():
		return "this replica's copies of keys and grants are behind etcd, so calls are refused until they catch up"
	case s.store.KeyMissing():
		return "another replica moved the database to a master key this one does not hold, so calls are refused; restart it with that key"
	case s.audit.Failing():
		return "the audit trail cannot be written, so calls are refused; see the server log"
	}
	return ""
}

// bootstrap makes the first admin of a new database, and says who it is;
// it returns the admin caller key that only the operator's terminal may
// see, if it made one.
func bootstrap(cfg Config, st *store.Store, cs *callers.Service) (secret.String, error) {
	already, err := st.Bootstrapped()
	if err != nil {
		return secret.String{}, fmt.Errorf("bootstrap the first admin: %w", err)
	}
	key, err := cs.Bootstrap(cfg.BootstrapAdminPrincipal, secret.New(cfg.BootstrapAdminKey), audit.Own(time.Now(), "bootstrap", "", ""))
	switch {
	case err != nil:
		return secret.String{}, fmt.Errorf("bootstrap the first admin: %w", err)
	case already || (key.IsZero() && cfg.BootstrapAdminPrincipal == ""):
		return secret.String{}, recoverAdmin(cfg, cs)
	case cfg.BootstrapAdminPrincipal != "":
		cfg.Logger.Info("made the first admin: the client-certificate principal given", "principal", cfg.BootstrapAdminPrincipal)
	case cfg.BootstrapAdminKey != "":
		cfg.Logger.Info("made the first admin caller key, " + callers.KeyPrincipalPrefix + callers.BootstrapKeyID + ": the one in --bootstrap-admin-key-file")
		return secret.String{}, nil
	}
	return key, nil
}

// recoverAdmin, on a database that has its admins already, says so, or,
// if no usable admin identity is left, makes the key in
// --bootstrap-admin-key-file an admin's, or says how to.
func recoverAdmin(cfg Config, cs *callers.Service) error {
	id, left, err := cs.Recover(secret.New(cfg.BootstrapAdminKey), audit.Own(time.Now(), "recover_admin", "", ""))
	switch {
	case errors.Is(err, callers.ErrKeyUsedBefore):
		// The file's key is a stale one, kept mounted: the broker serves,
		// and says what to do, as with no file.
		cfg.Logger.Error("no usable admin identity is left, and " + err.Error() + ", then restart the broker")
	case err != nil:
		return fmt.Errorf("make an admin key, none being left: %w", err)
	case id != "":
		cfg.Logger.Warn("no usable admin identity was left: made the key in --bootstrap-admin-key-file the admin key "+callers.KeyPrincipalPrefix+id+"; make your own admin key with it, then revoke it", "admin", callers.KeyPrincipalPrefix+id)
	case !left:
		cfg.Logger.Error("no usable admin identity is left (every admin key is revoked or expired, and no admin principal can sign in with a certificate): restart the broker with --bootstrap-admin-key-file naming a new key you made, and it becomes an admin key")
	default:
		cfg.Logger.Info("the database has its admins already, so no admin key is shown: the first one was shown (or read from --bootstrap-admin-key-file) when it was made; admins make more with: credbroker callers create ID --role admin")
	}
	return nil
}

// BootstrapAdminKey is the admin caller key created on the first start of a
// new database, or empty. It is not logged: show it to the operator once.
func (s *Server) BootstrapAdminKey() string { return s.bootstrapKey.Reveal() }

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// ProxyAddr is the egress proxy's address; nil when the proxy is off.
func (s *Server) ProxyAddr() net.Addr { return s.proxy.Addr() }

// OpsAddr is the ops listener's address; nil when it is off.
func (s *Server) OpsAddr() net.Addr { return s.ops.Addr() }

// HubAddr is the Hub's address; nil when it is off.
func (s *Server) HubAddr() net.Addr { return s.hub.Addr() }

// checkPublicURL refuses a --public-url that is not an http(s) address.
func checkPublicURL(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("--public-url %q: want the Hub's address as browsers reach it, such as https://credbroker.example.com", raw)
	}
	return nil
}

// hubURL is where browsers reach the Hub: --public-url, or the Hub's own
// address; "" when it is off.
func (s *Server) hubURL() string {
	switch {
	case s.hub == nil:
		return ""
	case s.cfg.PublicURL != "":
		return strings.TrimSuffix(s.cfg.PublicURL, "/")
	case s.cfg.TLSCertFile != "":
		return "https://" + s.hub.Addr().String()
	}
	return "http://" + s.hub.Addr().String()
}

// Serve answers calls and refreshes tokens until ctx ends, then shuts down
// gracefully: in-flight calls get ShutdownTimeout to finish, the refresher
// stops, and the database is closed (as Close does). A server is served
// once, and not after Close.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("credbroker: Serve was called again, or after Close")
	}
	s.started, s.served = true, make(chan struct{})
	ctx, s.stopServing = context.WithCancel(ctx)
	s.mu.Unlock()
	defer close(s.served)

	// The background loops; each stop ends one and waits for it.
	start := func(run func(context.Context)) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { run(ctx); close(done) }()
		return func() { cancel(); <-done }
	}
	stopMirror, stopRefresh, stopAudit := start(s.mirror.Run), start(s.tokens.Run), start(s.audit.Run)
	stopJournal := func() {}
	if s.journal != nil {
		stopJournal = start(s.journal.Run)
	}
	stopCompact := start(func(ctx context.Context) { datadir.CompactPeriodically(ctx, s.store, s.cfg.CompactInterval, s.log) })
	stopRefusals, stopLinks, stopEvents, stopWebhooks := start(s.gate.Run), start(s.links.Run), start(s.events.Run), start(s.webhooks.Run)
	stopProbe := func() {}
	if s.probe != nil {
		stopProbe = start(s.probe.run)
	}
	stopAnnounce := start(func(ctx context.Context) {
		s.store.KeepAnnouncing(ctx, func(err error) {
			s.log.Warn("could not tell the other replicas which master keys this one holds", "error", err)
		})
	})

	// A start reads every account: what it read of the database file and
	// the garbage of decoding it go back to the system now, not over
	// minutes, so that the broker's resident memory is what it uses.
	if err := s.store.ReleasePages(); err != nil {
		s.log.Warn("could not release the database's pages read at start", "error", err)
	}
	go debug.FreeOSMemory()

	serveErr := make(chan error, 4)
	go func() { serveErr <- s.grpc.Serve(s.listener) }()
	for _, h := range []*listeners.HTTP{s.proxy, s.ops, s.hub} {
		if h != nil {
			go func() { serveErr <- h.Serve() }()
			s.log.Info(h.Name()+" listening", "addr", h.Addr().String())
		}
	}
	build := version.Get()
	s.log.Info("credbroker listening", "version", build.Version, "commit", build.Commit, "addr", s.Addr().String(), "data_dir", s.cfg.DataDir, "auth", listeners.AuthSummary(s.cfg.TLSCertFile, s.cfg.ClientCAFile))
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
	s.events.Drain()
	// The relay and the deliveries stop at once, beside the rest: what
	// they leave (events in the outbox, deliveries not yet made) is kept,
	// for the next start or another replica; and each may be waiting for
	// its storage (etcd going down too), which would add to the rest.
	relaysStopped := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		wg.Go(stopEvents)
		wg.Go(stopWebhooks)
		wg.Wait()
		close(relaysStopped)
	}()
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	proxyStopped, hubStopped := s.proxy.Shutdown(s.cfg.ShutdownTimeout), s.hub.Shutdown(s.cfg.ShutdownTimeout)
	select {
	case <-stopped:
	case <-time.After(s.cfg.ShutdownTimeout):
		s.log.Warn("in-flight calls did not finish in time; closing them", "timeout", s.cfg.ShutdownTimeout)
		s.grpc.Stop()
	}
	<-proxyStopped
	<-hubStopped
	<-s.ops.Shutdown(s.cfg.ShutdownTimeout) // answering "not ready" until the end
	// Calls have finished: the last refusals are tallied, and written
	// while the audit writer still runs; then no one waits for it any more.
	stopRefusals()
	stopLinks()
	stopProbe()
	stopAnnounce()
	stopAudit()
	stopJournal() // after the audit writer's last events
	stopRefresh()
	<-relaysStopped
	stopCompact()
	stopMirror()
	if cerr := datadir.CompactIfPending(s.store); cerr != nil { // nothing writes any more
		s.log.Error("could not compact the database; deleted secrets stay in its freed pages until the next start", "error", cerr)
	}
	if cerr := s.releaseOnce(); cerr != nil && err == nil { // tracing, then the database
		err = cerr
	}
	s.log.Info("stopped")
	return err
}

// Close releases what New acquired: the listeners, tracing and the
// database. If Serve is running, Close stops it as the end of its context
// would, and waits for it to return. Close may be called more than once,
// and after Serve has returned; it then returns what the first release
// returned.
func (s *Server) Close() error {
	s.mu.Lock()
	s.started = true // no Serve after Close
	stop, served := s.stopServing, s.served
	s.mu.Unlock()
	if stop != nil {
		stop()
		<-served
	}
	return s.releaseOnce()
}

func (s *Server) releaseOnce() error {
	s.closeOnce.Do(func() { s.closeErr = s.release.run() })
	return s.closeErr
}
